//! `tav pretrain`: trains the toy world's model from a seed (VAE first, then the text
//! encoder and UNet together) and writes it as a diffusers folder, in f16, that every other
//! command loads as it loads Stable Diffusion.

use super::prelude::*;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use futures_lite::future::block_on;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tav_core::adamw::AdamW;
use tav_core::checkpoint::{
    Folder, LoadOptions, load_text_encoder_entries, load_unet, load_vae_entries,
    read_scheduler_config,
};
use tav_core::clip::ClipTextEncoder;
use tav_core::config::{PredictionType, SchedulerConfig};
use tav_core::draws::SeededRng;
use tav_core::pretrain::{
    Component, TextToImage, TextToImageBatch, ToyConfigs, caption_ids, edited_frames, frame_batch,
    image_unet, initial_models, latent_scale, object_weights, pretrain_settings,
    text_to_image_step, vae_step,
};
use tav_core::progress::{Event, Phase};
use tav_core::schedule::Schedule;
use tav_core::tokenizer::ClipTokenizer;
use tav_core::unet::UNet3D;
use tav_core::vae::Vae;
use tav_core::weights::HostTensor;
use tav_core::weights::ParamEntry;
use tav_core::{Result, TavError};

use crate::job::write_atomic;
use crate::ui::Ui;

const VOCAB: &[u8] = include_bytes!("../../../assets/clip-tokenizer/vocab.json");
const MERGES: &[u8] = include_bytes!("../../../assets/clip-tokenizer/merges.txt");
/// What transformers' `CLIPTokenizer.from_pretrained` reads besides the vocabulary: without
/// them it has no 77-token limit and no special tokens.
const TOKENIZER_CONFIG: &[u8] =
    include_bytes!("../../../assets/clip-tokenizer/tokenizer_config.json");
const SPECIAL_TOKENS: &[u8] =
    include_bytes!("../../../assets/clip-tokenizer/special_tokens_map.json");

/// How to pretrain (the `tav pretrain` flags).
#[derive(Debug, Clone, serde::Serialize, clap::Args)]
pub struct PretrainSpec {
    /// The model folder to write.
    #[serde(skip)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frame size in pixels (a multiple of 64); latents are a quarter of it.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, default_value_t = 600)]
    pub vae_steps: usize,
    #[arg(long, default_value_t = 8)]
    pub vae_batch: usize,
    #[arg(value_parser = crate::cli::learning_rate, long, default_value_t = 1e-3)]
    pub vae_learning_rate: f64,
    /// Weight of the VAE posterior's KL term (per value).
    #[arg(long, default_value_t = 1e-4)]
    pub kl_weight: f64,
    /// Text encoder + UNet steps.
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(value_parser = crate::cli::learning_rate, long, default_value_t = 5e-4)]
    pub learning_rate: f64,
    /// Anneal the text encoder + UNet learning rate to this by the last step (cosine)
    /// [default: constant at `--learning-rate`]: a constant rate leaves the loss hovering.
    #[arg(value_parser = crate::cli::learning_rate, long)]
    pub final_learning_rate: Option<f64>,
    /// Weight of the denoising loss where the object is (1 elsewhere): the object is a few
    /// latents of a frame, and its shape and colour are what captions name.
    #[arg(long, default_value_t = 1.0)]
    pub object_weight: f32,
    /// Share of captions left empty, so guidance has an unconditional model.
    #[arg(value_parser = crate::cli::share, long, default_value_t = 0.1)]
    pub empty_captions: f64,
    /// Offset noise: add this times one normal draw per latent and channel, constant over
    /// the latent, to the training noise. Plain noise leaves a latent's mean almost intact
    /// at every timestep, so the model never learns to move it. Tried for edits that change
    /// a background's brightness (road → beach, snow → grass); on the toy model it did not
    /// fix them, though colour and shape edits improved (docs/toy-world.md).
    #[arg(value_parser = crate::cli::offset_noise, long, default_value_t = 0.0)]
    pub offset_noise: f32,
    /// Scale each item's training noise by a factor drawn uniformly from this to 1; the
    /// target stays the one that implies the clean latent. DDIM inversion gives latents
    /// with less spread than the noise level they are told (a v-model's: a standard
    /// deviation of 0.70-0.75 at t = 961, where noise has 1), which plain training never
    /// shows the model [default: 1, plain noise].
    #[arg(value_parser = crate::cli::noise_scale_from, long, default_value_t = 1.0)]
    pub noise_scale_from: f32,
    /// Min-SNR loss weighting (Hang et al. 2023): weigh each item's denoising loss by
    /// min(SNR, γ)/SNR, so the nearly clean timesteps, which are easy, stop dominating the
    /// gradient and the noisy ones, where the model decides a frame's layout, get their share
    /// [default: off, every timestep weighs the same].
    #[arg(value_parser = crate::cli::min_snr_gamma, long)]
    pub min_snr_gamma: Option<f64>,
    /// What the UNet learns to predict: the noise (`epsilon`, SD v1's) or the velocity
    /// (`v_prediction`), which does not magnify its errors at the noisy end; written to the
    /// scheduler config [default: the `--resume-from` model's, else epsilon].
    #[arg(long, value_enum)]
    pub prediction_type: Option<PredictionType>,
    /// Share of each batch trained as edit pairs: a frame noised to a timestep at or above
    /// `--edit-pair-from`, captioned as the same frame with one attribute (colour,
    /// background or shape) changed, and the output must imply that edited frame. Edits
    /// start from such latents (an inverted clip under another caption), which plain
    /// text-to-image training never shows the model [default: 0, none].
    #[arg(value_parser = crate::cli::share, long, default_value_t = 0.0)]
    pub edit_pairs: f64,
    /// The lowest timestep of edit pairs: below it a noised frame shows its attributes, and
    /// the output would have to jump to another frame.
    #[arg(long, default_value_t = 500)]
    pub edit_pair_from: usize,
    /// Take the VAE (weights and latent scale) from this toy model folder instead of
    /// training one (`--vae-steps` is then ignored): retrain the text side only.
    #[arg(long)]
    pub vae_from: Option<PathBuf>,
    /// Then fine-tune the VAE's decoder alone for this many steps (batch `--vae-batch`,
    /// reconstruction only): the encoder, so the latents the UNet learns, stay as they are.
    #[arg(long, default_value_t = 0)]
    pub decoder_steps: usize,
    /// In the `--decoder-steps`, fade each latent's texture (its deviation from its
    /// per-channel mean) by a factor drawn uniformly from this to 1 before decoding, the
    /// target still the frame. Guided sampling can leave a frame's latent with less texture
    /// than any encoded frame has; a decoder that never saw one draws it as a bright striped
    /// frame with a white border (a flash frame) instead of the scene it still holds
    /// [default: 1, latents as encoded].
    #[arg(value_parser = crate::cli::decoder_contrast_from, long, default_value_t = 1.0)]
    pub decoder_contrast_from: f32,
    /// Start the text encoder and UNet from this toy model folder instead of from the seed
    /// (to train them on, or with `--steps 0` to take them as they are).
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
}

impl PretrainSpec {
    /// The text encoder + UNet learning rate at `step`: constant, or cosine-annealed from
    /// `learning_rate` to `final_learning_rate` over `steps`.
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        match self.final_learning_rate {
            None => self.learning_rate,
            Some(last) => {
                let progress = step as f64 / (self.steps.max(2) - 1) as f64;
                last + (self.learning_rate - last)
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// The prediction type to train: the flag's, else the resumed model's, else epsilon.
fn prediction_type(spec: &PretrainSpec) -> Result<PredictionType> {
    match (spec.prediction_type, &spec.resume_from) {
        (Some(named), _) => Ok(named),
        (None, Some(dir)) => Ok(read_scheduler_config(&Folder(dir.clone()))?.prediction_type),
        (None, None) => Ok(PredictionType::Epsilon),
    }
}

/// The file beside a pretrained model's components that records how it was made.
pub const REPORT_FILE: &str = "tav_pretrain.json";

/// What a pretraining run did, kept beside the model (`REPORT_FILE`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PretrainReport {
    /// VAE reconstruction MSE per step.
    pub vae_losses: Vec<f32>,
    pub vae_seconds: f64,
    pub latent_scale: f64,
    /// Denoising loss per step.
    pub unet_losses: Vec<f32>,
    pub unet_seconds: f64,
    /// Parameters per component.
    pub parameters: BTreeMap<String, usize>,
}

/// Trains and writes the model folder.
pub fn run(spec: &PretrainSpec, device: &Device, ui: &mut Ui) -> Result<PretrainReport> {
    let mut report = PretrainReport::default();
    if spec.size == 0 || !spec.size.is_multiple_of(64) {
        return Err(TavError::InvalidInput(format!(
            "--size {} is not a positive multiple of 64",
            spec.size
        )));
    }
    if spec.decoder_contrast_from < 1.0 && spec.decoder_steps == 0 {
        return Err(TavError::InvalidInput(format!(
            "--decoder-contrast-from {} acts in the decoder steps, and --decoder-steps is 0",
            spec.decoder_contrast_from
        )));
    }
    let mut configs = ToyConfigs::small();
    configs.scheduler["prediction_type"] =
        serde_json::to_value(prediction_type(spec)?).expect("a prediction type serialises");
    let merges = std::str::from_utf8(MERGES).expect("bundled merges are UTF-8");
    let tokenizer = ClipTokenizer::from_vocab_merges("assets/clip-tokenizer", VOCAB, merges, 77)?;
    let schedule = Schedule::new(&ToyConfigs::parsed::<SchedulerConfig>(&configs.scheduler)?)?;
    if spec.edit_pair_from >= schedule.num_train_timesteps() {
        return Err(TavError::InvalidInput(format!(
            "--edit-pair-from {} is not a timestep of the schedule (0 to {})",
            spec.edit_pair_from,
            schedule.num_train_timesteps() - 1
        )));
    }
    let (vae, text, unet) = initial_models(&configs, spec.seed, device)?;
    let mut rng = SeededRng::for_stream(spec.seed, "pretrain");

    // The VAE: reconstruction of single frames.
    let Component {
        model: vae_model,
        entries: vae_entries,
    } = vae;
    let (vae_model, vae_entries, vae_steps) = match &spec.vae_from {
        Some(dir) => {
            let (vae, entries) = load_vae_entries(&Folder(dir.clone()), device)?;
            if vae.downscale != vae_model.downscale {
                return Err(TavError::InvalidInput(format!(
                    "--vae-from {}: its VAE downscales by {}, the toy model's by {}",
                    dir.display(),
                    vae.downscale,
                    vae_model.downscale
                )));
            }
            (vae, entries, 0)
        }
        None => (vae_model, vae_entries, spec.vae_steps),
    };
    let loaded_scale = spec.vae_from.as_ref().map(|_| vae_model.scaling_factor);
    let mut optimiser = AdamW::new(&vae_entries, pretrain_settings(spec.vae_learning_rate));
    let mut model = optimiser.train_mode(vae_model);
    let latent = spec.size / model.downscale;
    let started = std::time::Instant::now();
    let steps = VaeSteps {
        count: vae_steps,
        kl_weight: spec.kl_weight,
        latent,
        contrast_from: 1.0,
    };
    let mut stage = Stage {
        spec,
        device,
        rng: &mut rng,
        ui: &mut *ui,
        report: &mut report,
    };
    model = steps.run(&mut stage, &mut optimiser, model)?;
    let model = train_decoder(&mut stage, &vae_entries, model, latent)?;
    report.vae_seconds = started.elapsed().as_secs_f64();
    let mut vae_model = AdamW::eval_mode(model);
    let pixels = frame_batch(&mut rng, 32, spec.size, device).pixels;
    vae_model.scaling_factor = match loaded_scale {
        Some(scale) => scale,
        None => block_on(latent_scale(&vae_model, pixels))?,
    };
    report.latent_scale = vae_model.scaling_factor;
    ui.say(&match &spec.vae_from {
        Some(dir) => format!(
            "VAE: taken from {}; latent scale {:.4}",
            dir.display(),
            vae_model.scaling_factor
        ),
        None => format!(
            "VAE: {} steps in {:.0} s, reconstruction MSE {:.4}; latent scale {:.4}",
            vae_steps,
            report.vae_seconds,
            report.vae_losses.last().copied().unwrap_or(f32::NAN),
            vae_model.scaling_factor
        ),
    });

    // The text encoder and the UNet: noise prediction on the VAE's latents.
    let (text, unet) = match &spec.resume_from {
        Some(dir) => resumed(dir, device)?,
        None => (text, unet),
    };
    let Component {
        model: text_model,
        entries: text_entries,
    } = text;
    let Component {
        model: unet_model,
        entries: unet_entries,
    } = unet;
    let mut optimiser = AdamW::new(
        text_entries.iter().chain(&unet_entries),
        pretrain_settings(spec.learning_rate),
    );
    let mut model = optimiser.train_mode(TextToImage {
        text_encoder: text_model,
        unet: unet_model,
    });
    let timesteps = schedule.num_train_timesteps() as u64;
    let started = std::time::Instant::now();
    for step in 0..spec.steps {
        optimiser.settings.learning_rate = spec.learning_rate_at(step);
        let batch = frame_batch(&mut rng, spec.batch, spec.size, device);
        // Drawn only when asked for, so runs without edit pairs replay earlier batches.
        let pairs: Vec<usize> = if spec.edit_pairs > 0.0 {
            (0..spec.batch)
                .filter(|_| rng.uniform() < spec.edit_pairs)
                .collect()
        } else {
            Vec::new()
        };
        let edits =
            (!pairs.is_empty()).then(|| edited_frames(&mut rng, &batch, &pairs, spec.size, device));
        let mut masks = batch.masks;
        for (&i, edited) in pairs.iter().zip(edits.iter().flat_map(|e| &e.masks)) {
            // Weigh both objects: where the source's was and where the edit's is.
            for (m, &e) in masks[i].iter_mut().zip(edited) {
                *m |= e;
            }
        }
        let weights = object_weights(
            &masks,
            spec.size,
            vae_model.downscale,
            spec.object_weight,
            device,
        );
        let eps = normal(&mut rng, [spec.batch, 4, latent, latent], device);
        let latents = vae_model
            .encode(batch.pixels)?
            .sample(eps)
            .mul_scalar(vae_model.scaling_factor);
        let noise = training_noise(
            &mut rng,
            [spec.batch, 4, latent, latent],
            spec.offset_noise,
            spec.noise_scale_from,
        )
        .to_device(device);
        let mut t: Vec<usize> = (0..spec.batch)
            .map(|_| rng.below(timesteps) as usize)
            .collect();
        let mut ids = caption_ids(&tokenizer, &batch.captions, spec.empty_captions, &mut rng)?;
        let edited = if let Some(edits) = edits {
            let k = pairs.len();
            let eps = normal(&mut rng, [k, 4, latent, latent], device);
            let edited = vae_model
                .encode(edits.pixels)?
                .sample(eps)
                .mul_scalar(vae_model.scaling_factor);
            let from = spec.edit_pair_from as u64;
            for (j, &i) in pairs.iter().enumerate() {
                t[i] = (from + rng.below(timesteps - from)) as usize;
                // Never blanked: the unconditional model must not learn to edit.
                ids[i] = tokenizer.encode(&edits.captions[j])?;
            }
            pairs
                .iter()
                .enumerate()
                .map(|(j, &i)| (i, edited.clone().narrow(0, j, 1)))
                .collect()
        } else {
            Vec::new()
        };
        let weights = match spec.min_snr_gamma {
            Some(gamma) => {
                let per_item: Vec<f32> = t
                    .iter()
                    .map(|&t| min_snr_weight(schedule.alphas_cumprod[t] as f64, gamma) as f32)
                    .collect();
                let per_item = Tensor::<1>::from_floats(per_item.as_slice(), device)
                    .reshape([spec.batch, 1, 1, 1]);
                weights * per_item
            }
            None => weights,
        };
        let batch = TextToImageBatch {
            latents,
            noise,
            timesteps: t,
            ids,
            weights,
            edited,
        };
        let (next, loss) = block_on(text_to_image_step(
            &mut optimiser,
            model,
            batch,
            &schedule,
            device,
        ))?;
        model = next;
        report.unet_losses.push(loss);
        ui.event(Event {
            phase: Phase::PretrainUnet,
            step: step + 1,
            total: spec.steps,
            loss: Some(loss),
        });
    }
    report.unet_seconds = started.elapsed().as_secs_f64();
    let model = AdamW::eval_mode(model);
    // With `--steps 0` there is no loss to show (it would print as NaN).
    ui.say(&match (report.unet_losses.last(), &spec.resume_from) {
        (Some(loss), _) => format!(
            "text encoder and UNet: {} steps in {:.0} s, denoising loss {loss:.4}",
            spec.steps, report.unet_seconds
        ),
        (None, Some(dir)) => format!("text encoder and UNet: taken from {}", dir.display()),
        (None, None) => "text encoder and UNet: 0 steps, left as initialised".to_string(),
    });

    let text = Component {
        model: model.text_encoder,
        entries: text_entries,
    };
    let unet = Component {
        model: model.unet,
        entries: unet_entries,
    };
    let vae = Component {
        model: vae_model,
        entries: vae_entries,
    };
    let count = |entries: &[tav_core::weights::ParamEntry]| {
        entries
            .iter()
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    };
    report.parameters = [
        ("vae", count(&vae.entries)),
        ("text_encoder", count(&text.entries)),
        ("unet", count(&unet.entries)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    write_folder(spec, &report, &configs, &vae, &text, &unet)?;
    Ok(report)
}

/// What the VAE's pretraining stages read and write: the spec and device, the draws, the
/// console and the report.
struct Stage<'a> {
    spec: &'a PretrainSpec,
    device: &'a Device,
    rng: &'a mut SeededRng,
    ui: &'a mut Ui,
    report: &'a mut PretrainReport,
}

/// `--decoder-steps` of reconstruction training for the decoder (and `post_quant_conv`)
/// alone; the losses are appended to the VAE's curve.
fn train_decoder(
    stage: &mut Stage,
    vae_entries: &[ParamEntry],
    model: Vae,
    latent: usize,
) -> Result<Vae> {
    let spec = stage.spec;
    if spec.decoder_steps == 0 {
        return Ok(model);
    }
    let decoder: Vec<ParamEntry> = vae_entries
        .iter()
        .filter(|e| e.key.starts_with("decoder.") || e.key.starts_with("post_quant_conv."))
        .cloned()
        .collect();
    let mut optimiser = AdamW::new(&decoder, pretrain_settings(spec.vae_learning_rate));
    let model = optimiser.train_mode(AdamW::eval_mode(model));
    let steps = VaeSteps {
        count: spec.decoder_steps,
        kl_weight: 0.0,
        latent,
        contrast_from: spec.decoder_contrast_from,
    };
    steps.run(stage, &mut optimiser, model)
}

/// A run of VAE steps on fresh frame batches (the whole VAE, or what `optimiser` trains),
/// appending the reconstruction errors to the report's VAE curve.
struct VaeSteps {
    count: usize,
    kl_weight: f64,
    /// Latent side, for the posterior's noise.
    latent: usize,
    /// Each item's latent is faded by a factor drawn from this to 1 (1: none drawn).
    contrast_from: f32,
}

impl VaeSteps {
    fn run(&self, stage: &mut Stage, optimiser: &mut AdamW, mut model: Vae) -> Result<Vae> {
        let (spec, device) = (stage.spec, stage.device);
        for step in 0..self.count {
            let pixels = frame_batch(stage.rng, spec.vae_batch, spec.size, device).pixels;
            let eps = normal(
                stage.rng,
                [spec.vae_batch, 4, self.latent, self.latent],
                device,
            );
            // Drawn only when asked for, so runs without it replay earlier batches.
            let contrast = (self.contrast_from < 1.0).then(|| {
                let factors: Vec<f32> = (0..spec.vae_batch)
                    .map(|_| factor_from(stage.rng, self.contrast_from))
                    .collect();
                Tensor::<1>::from_floats(factors.as_slice(), device).reshape([
                    spec.vae_batch,
                    1,
                    1,
                    1,
                ])
            });
            let (next, loss) = block_on(vae_step(
                optimiser,
                model,
                pixels,
                eps,
                self.kl_weight,
                contrast,
            ))?;
            model = next;
            stage.report.vae_losses.push(loss);
            stage.ui.event(Event {
                phase: Phase::PretrainVae,
                step: step + 1,
                total: self.count,
                loss: Some(loss),
            });
        }
        Ok(model)
    }
}

/// The text encoder and UNet of a toy model folder, to train on from.
fn resumed(
    dir: &std::path::Path,
    device: &Device,
) -> Result<(Component<ClipTextEncoder>, Component<UNet3D>)> {
    let files = Folder(dir.to_path_buf());
    let (text, text_entries) = load_text_encoder_entries(&files, device)?;
    let (unet, _, _) = load_unet(&files, None, &LoadOptions::default(), device)?;
    Ok((
        Component {
            model: text,
            entries: text_entries,
        },
        image_unet(unet),
    ))
}

fn normal<const D: usize>(rng: &mut SeededRng, shape: [usize; D], device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    HostTensor::new(shape.to_vec(), rng.normal_vec(n)).to_device(device)
}

/// Min-SNR-γ's weight of a timestep whose `ᾱ` is `alpha_cumprod`: `min(SNR, γ)/SNR`, with
/// `SNR = ᾱ/(1−ᾱ)` (1 at the noisy end, γ/SNR below 1 where the latent is nearly clean).
fn min_snr_weight(alpha_cumprod: f64, gamma: f64) -> f64 {
    let snr = alpha_cumprod / (1.0 - alpha_cumprod).max(f64::MIN_POSITIVE);
    snr.min(gamma) / snr.max(f64::MIN_POSITIVE)
}

/// Normal noise of `shape` `[N, C, h, w]`, plus `offset` times one normal draw per `(n, c)`
/// spread over `h × w`, each item's scaled by a factor drawn from `scale_from` to 1 (none
/// are drawn at offset 0 or scale 1, so earlier runs replay exactly). The targets are
/// computed from this noise, so they imply the clean latent whatever its scale.
fn training_noise(
    rng: &mut SeededRng,
    shape: [usize; 4],
    offset: f32,
    scale_from: f32,
) -> HostTensor {
    let [n, c, h, w] = shape;
    let mut values = rng.normal_vec(n * c * h * w);
    if offset != 0.0 {
        let shifts = rng.normal_vec(n * c);
        for (plane, shift) in values.chunks_mut(h * w).zip(shifts) {
            plane.iter_mut().for_each(|v| *v += offset * shift);
        }
    }
    // Drawn only when asked for, so runs without it replay earlier batches.
    if scale_from < 1.0 {
        for item in values.chunks_mut(c * h * w) {
            let scale = factor_from(rng, scale_from);
            item.iter_mut().for_each(|v| *v *= scale);
        }
    }
    HostTensor::new(shape.to_vec(), values)
}

/// A factor drawn uniformly from `low` to 1.
fn factor_from(rng: &mut SeededRng, low: f32) -> f32 {
    low + (1.0 - low) * rng.uniform() as f32
}

/// The diffusers folder: configs, f16 safetensors, the tokenizer, and `model_index.json`
/// last (its presence means the folder is complete).
fn write_folder(
    spec: &PretrainSpec,
    report: &PretrainReport,
    configs: &ToyConfigs,
    vae: &Component<tav_core::vae::Vae>,
    text: &Component<tav_core::clip::ClipTextEncoder>,
    unet: &Component<tav_core::unet::UNet3D>,
) -> Result<()> {
    let mut vae_config = configs.vae.clone();
    vae_config["scaling_factor"] = serde_json::json!(vae.model.scaling_factor);
    let mut text_tensors = block_on(text.values(|_| true))?;
    let table = text
        .entries
        .iter()
        .find(|e| e.key.ends_with("token_embedding.weight"))
        .ok_or_else(|| TavError::InvalidInput("the text encoder has no token table".into()))?;
    text_tensors.insert(table.key.clone(), text.model.token_embedding.to_f32());
    let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("unet/config.json", json(&configs.unet)),
        (
            "unet/diffusion_pytorch_model.safetensors",
            f16_safetensors(&block_on(unet.values(|_| true))?)?,
        ),
        ("vae/config.json", json(&vae_config)),
        (
            "vae/diffusion_pytorch_model.safetensors",
            f16_safetensors(&block_on(vae.values(|_| true))?)?,
        ),
        ("text_encoder/config.json", json(&configs.text_encoder)),
        (
            "text_encoder/model.safetensors",
            f16_safetensors(&text_tensors)?,
        ),
        ("scheduler/scheduler_config.json", json(&configs.scheduler)),
        ("tokenizer/vocab.json", VOCAB.to_vec()),
        ("tokenizer/merges.txt", MERGES.to_vec()),
        ("tokenizer/tokenizer_config.json", TOKENIZER_CONFIG.to_vec()),
        ("tokenizer/special_tokens_map.json", SPECIAL_TOKENS.to_vec()),
        (
            REPORT_FILE,
            json(&serde_json::json!({"settings": spec, "report": report})),
        ),
    ];
    for (relative, bytes) in files {
        write_atomic(&spec.out.join(relative), &bytes)?;
    }
    // The components as diffusers' `StableDiffusionPipeline.from_pretrained` looks them up.
    let index = serde_json::json!({
        "_class_name": "StableDiffusionPipeline",
        "_tav": "toy-world",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [null, null],
        "feature_extractor": [null, null],
        "requires_safety_checker": false
    });
    write_atomic(&spec.out.join("model_index.json"), &json(&index))
}

/// Tensors as f16 safetensors bytes, with the `{"format": "pt"}` metadata PyTorch's tools
/// expect.
fn f16_safetensors(tensors: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    let owned: Vec<(&String, &HostTensor, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let bytes = t
                .data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect();
            (k, t, bytes)
        })
        .collect();
    let views = owned
        .iter()
        .map(|(k, t, bytes)| {
            TensorView::new(Dtype::F16, t.shape.clone(), bytes)
                .map(|v| ((*k).clone(), v))
                .map_err(|e| TavError::InvalidInput(format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // transformers refuses a file without `format` ("metadata … has no attribute get").
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| TavError::InvalidInput(format!("cannot serialise the model: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        spec: PretrainSpec,
    }

    fn spec(args: &[&str]) -> PretrainSpec {
        let mut all = vec!["pretrain", "x"];
        all.extend(args);
        Flags::parse_from(all).spec
    }

    #[test]
    fn min_snr_weighs_clean_timesteps_down_and_leaves_noisy_ones() {
        // SNR 9 at ᾱ 0.9: γ 5 weighs it 5/9; SNR 1/9 at ᾱ 0.1 is under γ: weight 1.
        assert!((min_snr_weight(0.9, 5.0) - 5.0 / 9.0).abs() < 1e-12);
        assert!((min_snr_weight(0.1, 5.0) - 1.0).abs() < 1e-12);
        assert!(min_snr_weight(0.999, 5.0) < min_snr_weight(0.9, 5.0));
    }

    #[test]
    fn offset_noise_moves_each_planes_mean_and_none_replays_plain_noise() {
        let plain = training_noise(&mut SeededRng::new(7), [4, 4, 8, 8], 0.0, 1.0);
        // At offset 0 the draws are those of plain noise, as runs before the flag made them.
        assert_eq!(plain.data, SeededRng::new(7).normal_vec(4 * 4 * 8 * 8));
        let offset = training_noise(&mut SeededRng::new(7), [4, 4, 8, 8], 1.0, 1.0);
        let plane_means = |t: &HostTensor| -> Vec<f32> {
            t.data
                .chunks(64)
                .map(|p| p.iter().sum::<f32>() / 64.0)
                .collect()
        };
        let spread = |means: Vec<f32>| means.iter().map(|m| m * m).sum::<f32>() / 16.0;
        // A plane mean of 64 unit draws has variance 1/64; the offset adds 1.
        assert!(spread(plane_means(&plain)) < 0.1);
        assert!(spread(plane_means(&offset)) > 0.3);
        // The offset is constant within a plane: the within-plane differences are unchanged.
        let diff = |t: &HostTensor| t.data[1] - t.data[0];
        assert!((diff(&plain) - diff(&offset)).abs() < 1e-5);
    }

    #[test]
    fn noise_scale_shrinks_each_items_noise_within_its_range() {
        let shape = [6, 4, 8, 8];
        let plain = training_noise(&mut SeededRng::new(9), shape, 0.0, 1.0);
        let scaled = training_noise(&mut SeededRng::new(9), shape, 0.0, 0.5);
        let per_item = 4 * 8 * 8;
        let ratios: Vec<f32> = plain
            .data
            .chunks(per_item)
            .zip(scaled.data.chunks(per_item))
            .map(|(p, s)| {
                // One factor per item: every value of the item is scaled alike.
                let r = s[0] / p[0];
                assert!(p.iter().zip(s).all(|(p, s)| (s - r * p).abs() < 1e-5));
                r
            })
            .collect();
        assert!(ratios.iter().all(|r| (0.5..=1.0).contains(r)), "{ratios:?}");
        // Drawn, not one constant.
        assert!(
            ratios.iter().any(|r| (r - ratios[0]).abs() > 1e-3),
            "{ratios:?}"
        );
        let refused = Flags::try_parse_from(["pretrain", "x", "--noise-scale-from", "0"])
            .err()
            .unwrap()
            .to_string();
        assert!(refused.contains("--noise-scale-from"), "{refused}");
        assert_eq!(spec(&[]).noise_scale_from, 1.0);
    }

    /// `--decoder-contrast-from` is range-checked when read, and refused before any work
    /// without decoder steps to act in.
    #[test]
    fn decoder_contrast_is_checked_up_front() {
        for bad in ["0", "1.5", "-0.2"] {
            let flag = format!("--decoder-contrast-from={bad}");
            let refused = Flags::try_parse_from(["pretrain", "x", flag.as_str()])
                .err()
                .unwrap()
                .to_string();
            assert!(refused.contains("--decoder-contrast-from"), "{refused}");
        }
        assert_eq!(spec(&[]).decoder_contrast_from, 1.0);
        let dir = std::env::temp_dir().join(format!("tav-contrast-{}", std::process::id()));
        let mut lone = spec(&["--decoder-contrast-from", "0.3"]);
        lone.out = dir.clone();
        let err = run(&lone, &Device::default(), &mut Ui::new(Mode::Quiet))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("--decoder-contrast-from") && err.contains("--decoder-steps"),
            "{err}"
        );
        assert!(!dir.exists(), "a refused run leaves nothing behind");
    }

    /// The prediction type: the flag's, else the resumed model's, else epsilon; another
    /// value, or a resumed folder without a scheduler config, is refused naming it.
    #[test]
    fn prediction_type_comes_from_the_flag_or_the_resumed_model() {
        let refused = Flags::try_parse_from(["pretrain", "x", "--prediction-type", "sample"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            refused.contains("--prediction-type") && refused.contains("sample"),
            "{refused}"
        );
        assert_eq!(
            prediction_type(&spec(&[])).unwrap(),
            PredictionType::Epsilon
        );
        let dir = std::env::temp_dir().join(format!("tav-prediction-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("scheduler")).unwrap();
        let resumed = dir.to_str().unwrap();
        let missing = prediction_type(&spec(&["--resume-from", resumed])).unwrap_err();
        assert!(
            missing.to_string().contains("scheduler_config.json"),
            "{missing}"
        );
        std::fs::write(
            dir.join("scheduler/scheduler_config.json"),
            r#"{"prediction_type": "v_prediction"}"#,
        )
        .unwrap();
        assert_eq!(
            prediction_type(&spec(&["--resume-from", resumed])).unwrap(),
            PredictionType::VPrediction
        );
        let named = spec(&["--resume-from", resumed, "--prediction-type", "epsilon"]);
        assert_eq!(prediction_type(&named).unwrap(), PredictionType::Epsilon);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn learning_rate_is_constant_or_annealed_to_the_final_one() {
        let constant = spec(&["--steps", "11", "--learning-rate", "1e-3"]);
        assert_eq!(constant.learning_rate_at(0), 1e-3);
        assert_eq!(constant.learning_rate_at(10), 1e-3);
        let cosine = spec(&[
            "--steps",
            "11",
            "--learning-rate",
            "1e-3",
            "--final-learning-rate",
            "1e-4",
        ]);
        assert!((cosine.learning_rate_at(0) - 1e-3).abs() < 1e-12);
        assert!((cosine.learning_rate_at(5) - 5.5e-4).abs() < 1e-12);
        assert!((cosine.learning_rate_at(10) - 1e-4).abs() < 1e-12);
        assert!(cosine.learning_rate_at(3) > cosine.learning_rate_at(4));
    }
}

/// The arguments of `tav pretrain`.
#[derive(Args)]
pub struct PretrainCommand {
    #[command(flatten)]
    pub spec: pretrain::PretrainSpec,
    /// Device: auto (wgpu's default adapter), discrete[:N], integrated[:N], virtual[:N],
    /// cpu (a wgpu CPU adapter such as lavapipe) or flex (burn's CPU backend; no WGSL
    /// kernels; several times faster than lavapipe on a machine without a GPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// No progress bars or messages.
    #[arg(long)]
    pub quiet: bool,
    /// Progress as JSON lines on stdout (one per step, with its loss) instead of bars.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
}

/// Runs `tav pretrain`.
pub fn command(args: PretrainCommand) -> Result<()> {
    let PretrainCommand {
        spec,
        device,
        quiet,
        json,
    } = args;
    let gpu::Opened {
        device,
        description: adapter,
        ..
    } = gpu::open(&device).map_err(TavError::Device)?;
    let mut ui = Ui::new(if quiet {
        Mode::Quiet
    } else if json {
        Mode::Json
    } else {
        Mode::Bars
    });
    ui.say(&format!("GPU adapter: {adapter}"));
    let started = std::time::Instant::now();
    let report = pretrain::run(&spec, &device, &mut ui)?;
    ui.say(&format!(
        "wrote {} in {:.1} min ({} parameters)",
        spec.out.display(),
        started.elapsed().as_secs_f64() / 60.0,
        report.parameters.values().sum::<usize>()
    ));
    Ok(())
}

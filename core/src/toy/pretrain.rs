//! Pretraining the toy world's model from scratch: Stable Diffusion v1's pipeline (VAE, CLIP
//! text encoder with the real tokenizer, UNet) at small widths, trained on generated frames
//! and captions. First the VAE learns to reconstruct frames; then the text encoder and the
//! UNet learn noise prediction on the VAE's latents, as an image model (one frame, no
//! temporal layers), exactly what Tune-A-Video inflates. The result loads like SD.

use std::collections::HashMap;

use burn::module::{Module, ParamId};
use burn::tensor::{Device, Tensor};

use crate::adamw::{AdamW, AdamWSettings, read_values};
use crate::clip::ClipTextEncoder;
use crate::config::{ClipConfig, UNetConfig, VaeConfig};
use crate::draws::SeededRng;
use crate::error::{Result, TavError};
use crate::schedule::Schedule;
use crate::tokenizer::ClipTokenizer;
use crate::toyworld::{Background, ClipSpec, Colour, Shape, render};
use crate::transformer::VideoAttentionOptions;
use crate::unet::{UNet3D, is_temporal};
use crate::vae::Vae;
use crate::weights::{HostTensor, Layout, ParamEntry, RandomInit};

/// The toy model's component configs, as diffusers writes them: 64×64 frames, 16×16×4
/// latents, about 10 MB in f16 with CLIP's 49,408-token table.
#[derive(Debug, Clone)]
pub struct ToyConfigs {
    pub unet: serde_json::Value,
    pub vae: serde_json::Value,
    pub text_encoder: serde_json::Value,
    pub scheduler: serde_json::Value,
}

impl ToyConfigs {
    pub fn small() -> Self {
        Self {
            unet: serde_json::json!({
                "_class_name": "UNet2DConditionModel",
                "attention_head_dim": 4,
                "block_out_channels": [32, 64, 96],
                "cross_attention_dim": 32,
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "norm_num_groups": 32,
                "norm_eps": 1e-5, "flip_sin_to_cos": true, "freq_shift": 0, "sample_size": 16
            }),
            vae: serde_json::json!({
                "_class_name": "AutoencoderKL",
                "block_out_channels": [16, 32, 64],
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
                "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
                "norm_num_groups": 16, "sample_size": 64, "scaling_factor": 1.0
            }),
            text_encoder: serde_json::json!({
                "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
                "hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 77, "vocab_size": 49408,
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 49406,
                "eos_token_id": 49407, "pad_token_id": 49407
            }),
            scheduler: serde_json::json!({
                "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                "set_alpha_to_one": false, "steps_offset": 1, "clip_sample": false
            }),
        }
    }

    pub fn parsed<T: for<'de> serde::Deserialize<'de>>(value: &serde_json::Value) -> Result<T> {
        serde_json::from_value(value.clone())
            .map_err(|e| TavError::InvalidInput(format!("toy model config: {e}")))
    }
}

/// Standard deviation of the toy text encoder's frozen random token table.
pub const TOKEN_TABLE_STD: f32 = 0.5;

/// A model being pretrained, with the parameter entries that name its tensors.
pub struct Component<M> {
    pub model: M,
    pub entries: Vec<ParamEntry>,
}

impl<M: Module> Component<M> {
    /// The parameters' values by reference key, in PyTorch layout (`keep` filters keys).
    pub async fn values(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> Result<std::collections::BTreeMap<String, HostTensor>> {
        let wanted: HashMap<ParamId, (String, Layout)> = self
            .entries
            .iter()
            .filter(|e| keep(&e.key))
            .map(|e| (e.id, (e.key.clone(), e.layout)))
            .collect();
        read_values(&self.model, &wanted).await
    }
}

/// Fresh, seeded components at the toy sizes.
pub fn initial_models(
    configs: &ToyConfigs,
    seed: u64,
    device: &Device,
) -> Result<(
    Component<Vae>,
    Component<ClipTextEncoder>,
    Component<UNet3D>,
)> {
    let init = RandomInit { seed };
    let p = init.builder(device);
    let vae = Vae::load(&p, &ToyConfigs::parsed::<VaeConfig>(&configs.vae)?)?;
    let vae = Component {
        model: vae,
        entries: p.entries(),
    };
    // The token table stays at its init (tav gathers it on the host, outside autodiff), so
    // its rows must be far apart for the encoder to tell words apart: std 0.5, not the 0.02
    // of an embedding that trains (position embeddings, which do, would drown it).
    let p = init.builder_scaling(device, "token_embedding.weight", TOKEN_TABLE_STD / 0.02);
    let text = ClipTextEncoder::load(
        &p,
        &ToyConfigs::parsed::<ClipConfig>(&configs.text_encoder)?,
    )?;
    let text = Component {
        model: text,
        entries: p.entries(),
    };
    let p = init.builder(device);
    let unet = UNet3D::load(&p, &ToyConfigs::parsed::<UNetConfig>(&configs.unet)?)?;
    Ok((vae, text, image_unet(unet)))
}

/// The UNet as an image model to pretrain: every parameter but the temporal layers.
pub fn image_unet(unet: UNet3D) -> Component<UNet3D> {
    let entries = unet
        .params
        .iter()
        .filter(|e| !is_temporal(&e.key))
        .cloned()
        .collect();
    Component {
        model: unet,
        entries,
    }
}

/// A batch of training frames: one random frame of each of `batch` random clips.
pub struct FrameBatch {
    /// `[N, 3, S, S]` in [-1, 1].
    pub pixels: Tensor<4>,
    pub captions: Vec<String>,
    /// The object's pixels in each frame (`S × S`, row-major).
    pub masks: Vec<Vec<bool>>,
    /// Each frame's clip and its index in that clip.
    pub frames: Vec<(ClipSpec, usize)>,
}

/// The length of the clips training frames are drawn from.
const CLIP_FRAMES: usize = 8;

pub fn frame_batch(rng: &mut SeededRng, batch: usize, size: usize, device: &Device) -> FrameBatch {
    let frames = (0..batch)
        .map(|_| {
            let spec = ClipSpec::random(rng.next_u64(), CLIP_FRAMES, size);
            (spec, rng.below(CLIP_FRAMES as u64) as usize)
        })
        .collect();
    draw_frames(frames, size, device)
}

/// Edit pairs for pretraining: for each frame of `items`, the same frame of its clip with
/// one attribute (colour, background or shape, each as likely) changed to another value, and
/// that clip's caption. The object keeps its path, so the pair is what an edit of the frame
/// should give.
pub fn edited_frames(
    rng: &mut SeededRng,
    batch: &FrameBatch,
    items: &[usize],
    size: usize,
    device: &Device,
) -> FrameBatch {
    fn other<T: Copy + PartialEq>(rng: &mut SeededRng, all: &[T], now: T) -> T {
        let rest: Vec<T> = all.iter().copied().filter(|&v| v != now).collect();
        rest[rng.below(rest.len() as u64) as usize]
    }
    let frames = items
        .iter()
        .map(|&i| {
            let (mut spec, pick) = batch.frames[i];
            match rng.below(3) {
                0 => spec.colour = other(rng, &Colour::ALL, spec.colour),
                1 => spec.background = other(rng, &Background::ALL, spec.background),
                _ => spec.shape = other(rng, &Shape::ALL, spec.shape),
            }
            (spec, pick)
        })
        .collect();
    draw_frames(frames, size, device)
}

fn draw_frames(frames: Vec<(ClipSpec, usize)>, size: usize, device: &Device) -> FrameBatch {
    let mut data = Vec::with_capacity(frames.len() * 3 * size * size);
    let mut captions = Vec::with_capacity(frames.len());
    let mut masks = Vec::with_capacity(frames.len());
    for (spec, pick) in &frames {
        let mut clip = render(spec);
        for c in 0..3 {
            data.extend(
                clip.frames[*pick]
                    .chunks_exact(3)
                    .map(|p| p[c] as f32 / 127.5 - 1.0),
            );
        }
        captions.push(spec.caption());
        masks.push(std::mem::take(&mut clip.masks[*pick]));
    }
    FrameBatch {
        pixels: HostTensor::new(vec![frames.len(), 3, size, size], data).to_device(device),
        captions,
        masks,
        frames,
    }
}

/// Per-latent weights of the denoising loss `[N, 1, S/d, S/d]`: 1 on the background, up to
/// `object_weight` where the object covers the latent's `d × d` pixels. The object is a few
/// latents of a frame, so an unweighted loss learns the background long before the shape a
/// caption names.
pub fn object_weights(
    masks: &[Vec<bool>],
    size: usize,
    downscale: usize,
    object_weight: f32,
    device: &Device,
) -> Tensor<4> {
    let latent = size / downscale;
    let data = object_weight_values(masks, size, downscale, object_weight);
    HostTensor::new(vec![masks.len(), 1, latent, latent], data).to_device(device)
}

fn object_weight_values(
    masks: &[Vec<bool>],
    size: usize,
    downscale: usize,
    object_weight: f32,
) -> Vec<f32> {
    let latent = size / downscale;
    let mut data = Vec::with_capacity(masks.len() * latent * latent);
    for mask in masks {
        for ly in 0..latent {
            for lx in 0..latent {
                let covered = (0..downscale * downscale)
                    .filter(|i| {
                        let (y, x) = (
                            ly * downscale + i / downscale,
                            lx * downscale + i % downscale,
                        );
                        mask[y * size + x]
                    })
                    .count() as f32
                    / (downscale * downscale) as f32;
                data.push(1.0 + (object_weight - 1.0) * covered);
            }
        }
    }
    data
}

/// One VAE step: reconstruction MSE plus `kl_weight` × the posterior's KL to a standard
/// normal. `vae` is in the optimiser's train mode. With `contrast`, the sampled latents are
/// faded by [`with_contrast`] before decoding, the target still the frame itself. Returns
/// the reconstruction error too.
pub async fn vae_step(
    optimiser: &mut AdamW,
    vae: Vae,
    pixels: Tensor<4>,
    eps: Tensor<4>,
    kl_weight: f64,
    contrast: Option<Tensor<4>>,
) -> Result<(Vae, f32)> {
    let posterior = vae.encode(pixels.clone())?;
    let kl = (posterior.mean.clone().square() + posterior.logvar.clone().exp()
        - posterior.logvar.clone().add_scalar(1.0))
    .mean()
    .mul_scalar(0.5);
    let latents = posterior.sample(eps);
    let latents = match contrast {
        Some(factors) => with_contrast(latents, factors),
        None => latents,
    };
    let reconstructed = vae.decode(latents);
    let mse = (reconstructed - pixels).square().mean();
    let mse_value = scalar(mse.clone(), "the VAE's reconstruction error").await?;
    let loss = mse + kl.mul_scalar(kl_weight);
    let (vae, _) = optimiser.step(vae, loss, false).await?;
    Ok((vae, mse_value))
}

/// `latents` `[N, C, h, w]` with each item's deviation from its per-channel mean scaled by
/// its factor in `factors` `[N, 1, 1, 1]`: the mean (a frame's colour) stays, the texture
/// and edges fade.
pub fn with_contrast(latents: Tensor<4>, factors: Tensor<4>) -> Tensor<4> {
    let means = latents.clone().mean_dim(3).mean_dim(2);
    means.clone() + (latents - means) * factors
}

/// The latent scale SD uses: 1 / the standard deviation of latent means over `pixels`.
pub async fn latent_scale(vae: &Vae, pixels: Tensor<4>) -> Result<f64> {
    let mean = vae.encode(pixels)?.mean;
    let centred = mean.clone() - mean.mean().unsqueeze::<4>();
    let var = scalar(centred.square().mean(), "the latents' variance").await?;
    Ok(1.0 / (var as f64).sqrt().max(1e-6))
}

/// The text encoder and the UNet, trained together.
#[derive(Module, Debug)]
pub struct TextToImage {
    pub text_encoder: ClipTextEncoder,
    pub unet: UNet3D,
}

/// One batch of text-to-image pretraining.
pub struct TextToImageBatch {
    /// Scaled latents `[N, C, h, w]`, one frame each.
    pub latents: Tensor<4>,
    /// The noise added to them, which the UNet must predict (or the velocity it makes).
    pub noise: Tensor<4>,
    /// One timestep per item.
    pub timesteps: Vec<usize>,
    /// The captions' token ids.
    pub ids: Vec<Vec<u32>>,
    /// Per-pixel weights of the squared error `[N, 1, h, w]` (see [`object_weights`]).
    pub weights: Tensor<4>,
    /// Edit pairs: for these items, the clean latent `[1, C, h, w]` of the edited frame
    /// ([`edited_frames`]) the output must imply instead of the noised frame's own, under
    /// the edited caption (`ids`).
    pub edited: Vec<(usize, Tensor<4>)>,
}

/// One text-to-image step: noise (or velocity) prediction on the batch's latents (temporal layers off)
/// conditioned on its captions; the squared error is averaged with its weights.
pub async fn text_to_image_step(
    optimiser: &mut AdamW,
    model: TextToImage,
    batch: TextToImageBatch,
    schedule: &Schedule,
    device: &Device,
) -> Result<(TextToImage, f32)> {
    let TextToImageBatch {
        latents,
        noise,
        timesteps,
        ids,
        weights,
        edited,
    } = batch;
    let [n, c, h, w] = latents.dims();
    let edited: HashMap<usize, Tensor<4>> = edited.into_iter().collect();
    // Each item at its own timestep: the noised latent the UNet sees, and what it must predict.
    let (noisy, target): (Vec<Tensor<4>>, Vec<Tensor<4>>) = timesteps
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let (x0, eps) = (
                latents.clone().narrow(0, i, 1),
                noise.clone().narrow(0, i, 1),
            );
            let noisy = schedule.add_noise(x0.clone(), eps.clone(), t);
            let target = match edited.get(&i) {
                Some(edited) => schedule.target_toward(noisy.clone(), edited.clone(), t),
                None => schedule.training_target(x0, eps, t),
            };
            (noisy, target)
        })
        .unzip();
    let noisy = Tensor::cat(noisy, 0).reshape([n, c, 1, h, w]);
    let target = Tensor::cat(target, 0);
    let context = model.text_encoder.forward(&ids, device)?;
    let options = VideoAttentionOptions {
        temporal: false,
        ..VideoAttentionOptions::default()
    };
    let t: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
    let predicted = model.unet.forward(noisy, &t, context, options)?;
    let weights = weights.expand([n, c, h, w]);
    let loss = ((predicted.reshape([n, c, h, w]) - target).square() * weights.clone()).sum()
        / weights.sum();
    let value = scalar(loss.clone(), "the denoising loss").await?;
    let (model, _) = optimiser.step(model, loss, false).await?;
    Ok((model, value))
}

/// Captions as token ids, with `empty_share` of them blanked (so guidance has an
/// unconditional model to push against).
pub fn caption_ids(
    tokenizer: &ClipTokenizer,
    captions: &[String],
    empty_share: f64,
    rng: &mut SeededRng,
) -> Result<Vec<Vec<u32>>> {
    captions
        .iter()
        .map(|c| {
            let text = if rng.uniform() < empty_share { "" } else { c };
            tokenizer.encode(text)
        })
        .collect()
}

/// Default optimiser settings for pretraining (no clipping below a norm of 1, mild decay).
pub fn pretrain_settings(learning_rate: f64) -> AdamWSettings {
    AdamWSettings {
        learning_rate,
        weight_decay: 1e-4,
        ..AdamWSettings::default()
    }
}

async fn scalar(t: Tensor<1>, what: &str) -> Result<f32> {
    let v: f32 = t
        .try_into_scalar_async()
        .await
        .map_err(|e| TavError::Device(format!("reading {what} back failed: {e:?}")))?;
    if !v.is_finite() {
        return Err(TavError::NonFinite(format!(
            "{what} is {v}; lower the learning rate"
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fading keeps each item's per-channel mean (its colour) and scales the rest by the
    /// item's own factor: 1 leaves the latent as it is, 0 leaves only the means.
    #[test]
    fn with_contrast_keeps_channel_means_and_scales_each_items_texture() {
        let device = Device::default();
        let shape = [3, 4, 5, 7];
        let n: usize = shape.iter().product();
        let values = SeededRng::new(3).normal_vec(n);
        let latents = Tensor::<1>::from_floats(values.as_slice(), &device).reshape(shape);
        let factors = Tensor::<1>::from_floats([1.0, 0.5, 0.0], &device).reshape([3, 1, 1, 1]);
        let faded = with_contrast(latents, factors)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        for (item, factor) in [1.0f32, 0.5, 0.0].into_iter().enumerate() {
            for channel in 0..4 {
                let at = (item * 4 + channel) * 35;
                let (before, after) = (&values[at..at + 35], &faded[at..at + 35]);
                let mean = before.iter().sum::<f32>() / 35.0;
                let faded_mean = after.iter().sum::<f32>() / 35.0;
                assert!((mean - faded_mean).abs() < 1e-5, "{mean} {faded_mean}");
                for (b, a) in before.iter().zip(after) {
                    assert!(
                        (a - (mean + factor * (b - mean))).abs() < 1e-5,
                        "{b} -> {a}"
                    );
                }
            }
        }
    }

    /// An edit pair is the same frame of the same clip with exactly one attribute changed,
    /// captioned as drawn; all three attributes get edited; the object keeps its place.
    #[test]
    fn edited_frames_change_one_attribute_of_the_same_frame() {
        let device = Device::default();
        let mut rng = SeededRng::new(5);
        for size in [64, 128] {
            let batch = frame_batch(&mut rng, 24, size, &device);
            let items: Vec<usize> = (0..24).filter(|i| i % 4 != 1).collect();
            let edits = edited_frames(&mut rng, &batch, &items, size, &device);
            assert_eq!(edits.pixels.dims(), [items.len(), 3, size, size]);
            let mut changed = [0usize; 3];
            for (j, &i) in items.iter().enumerate() {
                let ((a, pick_a), (b, pick_b)) = (batch.frames[i], edits.frames[j]);
                assert_eq!(
                    (pick_a, a.path, a.seed, a.frames),
                    (pick_b, b.path, b.seed, b.frames)
                );
                let diffs = [
                    a.colour != b.colour,
                    a.background != b.background,
                    a.shape != b.shape,
                ];
                assert_eq!(diffs.iter().filter(|&&d| d).count(), 1, "{a:?} -> {b:?}");
                for (k, d) in diffs.iter().enumerate() {
                    changed[k] += *d as usize;
                }
                assert_eq!(edits.captions[j], b.caption());
                assert_ne!(edits.captions[j], batch.captions[i]);
                let overlap = |m: &[bool], n: &[bool]| {
                    let both = m.iter().zip(n).filter(|(x, y)| **x && **y).count();
                    let either = m.iter().zip(n).filter(|(x, y)| **x || **y).count();
                    both as f64 / either as f64
                };
                // Same place: a shape edit keeps most of the object's pixels, the others all.
                let iou = overlap(&batch.masks[i], &edits.masks[j]);
                assert!(if diffs[2] { iou > 0.6 } else { iou == 1.0 }, "IoU {iou}");
            }
            assert!(
                changed.iter().all(|&c| c > 0),
                "edits per attribute {changed:?}"
            );
        }
    }

    #[test]
    fn object_weights_follow_the_share_of_object_pixels_per_latent() {
        // 4×4 pixels, downscale 2: the object covers the top-left latent fully and half of
        // the top-right one.
        let mut mask = vec![false; 16];
        for i in [0, 1, 4, 5, 2, 6] {
            mask[i] = true;
        }
        let weights = object_weight_values(&[mask, vec![false; 16]], 4, 2, 5.0);
        assert_eq!(weights, vec![5.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }
}

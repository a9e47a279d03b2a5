//! The whole job, as the command line runs it: clip → latents → tuned model → inverted
//! latents → edited videos. Files in and out live here; the models and steps are `tav-core`'s.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use tav_core::checkpoint::{LoadOptions, Models};
use tav_core::config::UNetConfig;
use tav_core::delta::{LoraUse, TuneMeta, TunedWeights, apply_tuned};
use tav_core::edit::{Denoiser, Guidance, decode_video};
use tav_core::footprint::{VideoShape, largest_attention_bytes};
use tav_core::limits::DeviceLimits;
use tav_core::plan::{JobShape, check_fits as check_fits_plan};
use tav_core::progress::{Event, Phase};
use tav_core::schedule::Ddim;
use tav_core::transformer::VideoAttentionOptions;
use tav_core::tune::{
    Flow, StepReport, TuneBatch, TuneSettings, Tuner, TuningRun, clip_latents, seeded,
};
use tav_core::unet::UNet3D;
use tav_core::vae::Posterior;
use tav_core::weights::{HostTensor, SafetensorsFile};
use tav_core::{Result, TavError};

use crate::models::ModelChoice;
use crate::ui::Ui;
use crate::video::{self, Clip, Sampling};
use tav_core::window::{Window, WindowedDenoiser};

/// Which frames of which video, at what size.
#[derive(Debug, Clone)]
pub struct ClipSpec {
    pub video: PathBuf,
    pub start: usize,
    pub stride: usize,
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    pub crop: bool,
}

#[derive(Debug, Clone)]
pub struct TuneSpec {
    pub prompt: String,
    pub steps: usize,
    pub learning_rate: f64,
    pub seed: u64,
    pub checkpoint_every: usize,
    pub restart: bool,
}

#[derive(Debug, Clone)]
pub struct EditSpec {
    pub prompts: Vec<String>,
    pub inversion_steps: usize,
    pub steps: usize,
    pub guidance: Guidance,
    pub png: bool,
    /// Invert and edit window by window (`--window`), or the whole clip at once.
    pub window: Option<tav_core::window::Window>,
}

impl TuneSpec {
    /// The reference's settings: 500 steps at 3e-5, seed 33, a checkpoint every 100 steps.
    pub fn reference(prompt: String) -> Self {
        Self {
            prompt,
            steps: tav_core::tune::REFERENCE_STEPS,
            learning_rate: TuneSettings::default().learning_rate,
            seed: tav_core::tune::REFERENCE_SEED,
            checkpoint_every: 100,
            restart: false,
        }
    }
}

impl EditSpec {
    /// How many frames the UNet sees at once when editing `frames`: a window and its
    /// anchor, or the whole clip.
    pub fn unet_frames(&self, frames: usize) -> usize {
        self.window.map_or(frames, |w| frames.min(w.size + 1))
    }

    /// The reference's settings: 50 inversion and 50 sampling steps, guidance 12.5.
    pub fn reference(prompts: Vec<String>) -> Self {
        Self {
            prompts,
            inversion_steps: 50,
            steps: 50,
            guidance: Guidance::from(12.5),
            png: false,
            window: None,
        }
    }
}

/// The loaded models on their device.
pub struct Session {
    pub device: Device,
    pub models: Models,
    /// How the UNet attends (`--attention kernels`: the memory-efficient WGSL kernels).
    pub attention: VideoAttentionOptions,
    /// What the device allows in one buffer: sizes the VAE's frame chunks.
    pub limits: DeviceLimits,
    /// `--recompute`, resolved into `attention.recompute` by [`Session::check_plan`].
    pub recompute: crate::gpu::RecomputeChoice,
    /// The LoRAs merged into the model (recorded in tuned weights).
    pub loras: Vec<LoraUse>,
}

pub fn video_error(e: video::VideoError) -> TavError {
    TavError::InvalidInput(e.to_string())
}

/// Writes `bytes` to `path` atomically ([`crate::atomic`]): never half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::atomic::write_bytes(path, bytes, |path, e| TavError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Stops the run when `x` holds NaN or infinity: `what` names the step, `cause` the setting
/// that likely did it. No video is ever written from non-finite latents.
pub fn check_finite<const D: usize>(x: &Tensor<D>, what: &str, cause: &str) -> Result<()> {
    let finite: bool = x
        .clone()
        .is_finite()
        .all()
        .try_into_scalar()
        .map_err(|e| TavError::Device(format!("reading back {what}: {e:?}")))?;
    if finite {
        Ok(())
    } else {
        Err(TavError::NonFinite(format!(
            "{what} holds NaN or infinity; {cause}"
        )))
    }
}

/// Refuses tuned values holding NaN or infinity before they are written.
fn check_tuned_finite(
    tensors: &std::collections::BTreeMap<String, HostTensor>,
    step: usize,
    learning_rate: f64,
) -> Result<()> {
    match tensors
        .iter()
        .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
    {
        Some((key, _)) => Err(TavError::NonFinite(format!(
            "the tuned layer `{key}` holds NaN or infinity after step {step}: tuning diverged at \
             learning rate {learning_rate}; lower it (the reference: 3e-5)"
        ))),
        None => Ok(()),
    }
}

/// Refuses a video that is all black (every pixel 0): what non-finite or collapsed latents
/// decode to, never a real edit.
pub fn check_not_black(clip: &Clip, what: &str) -> Result<()> {
    if clip.frames.iter().all(|f| f.iter().all(|&v| v == 0)) {
        return Err(TavError::NonFinite(format!(
            "{what} decoded to an all-black video: the latents collapsed (too strong guidance, or \
             tuned weights that diverged); nothing was written for it"
        )));
    }
    Ok(())
}

impl ClipSpec {
    /// The index of the last frame sampled, `None` if it overflows.
    pub fn last_frame(&self) -> Option<usize> {
        if self.frames == Sampling::ALL {
            return Some(self.start);
        }
        self.stride
            .checked_mul(self.frames.checked_sub(1)?)?
            .checked_add(self.start)
    }

    /// With `--frames all`, reads the clip to count its frames and returns it with
    /// `frames` set to that count (refusing more than [`crate::jobfile::MAX_FRAMES`]);
    /// otherwise nothing is read.
    pub fn resolve_all(&mut self) -> Result<Option<Clip>> {
        if self.frames != Sampling::ALL {
            return Ok(None);
        }
        let clip = self.read()?;
        let count = clip.frames.len();
        crate::jobfile::check_frames(count).map_err(|reason| {
            TavError::InvalidInput(format!(
                "--frames all: {} has {count} frames from {} at stride {}: {reason}; raise --stride",
                self.video.display(),
                self.start,
                self.stride
            ))
        })?;
        self.frames = count;
        Ok(Some(clip))
    }

    /// The sampled, resized frames.
    pub fn read(&self) -> Result<Clip> {
        let last = self.last_frame().ok_or_else(|| {
            TavError::InvalidInput("the sampled frames reach past any video's length".into())
        })?;
        let sampling = Sampling {
            start: self.start,
            stride: self.stride,
            count: self.frames,
        };
        let clip = if self.video.as_os_str() == "demo" {
            if self.frames == Sampling::ALL {
                return Err(TavError::InvalidInput(
                    "--frames all: the demo clip has no end; give a number of frames".into(),
                ));
            }
            crate::demo::demo_clip(last + 1, sampling)
        } else {
            video::read_clip(&self.video, sampling).map_err(video_error)?
        };
        Ok(video::resize(
            &clip,
            self.width as u32,
            self.height as u32,
            self.crop,
        ))
    }
}

/// RGB8 frames → `[F, 3, H, W]` in [-1, 1].
pub fn clip_to_tensor(clip: &Clip, device: &Device) -> Tensor<4> {
    let (w, h) = (clip.width as usize, clip.height as usize);
    let f = clip.frames.len();
    let mut data = vec![0f32; f * 3 * h * w];
    for (i, frame) in clip.frames.iter().enumerate() {
        for (p, rgb) in frame.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[((i * 3 + c) * h * w) + p] = rgb[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    HostTensor::new(vec![f, 3, h, w], data).to_device(device)
}

/// `[1, 3, F, H, W]` in [0, 1] → RGB8 frames.
pub fn tensor_to_clip(video: Tensor<5>, fps: f32) -> Clip {
    let [_, _, f, h, w] = video.dims();
    let data: Vec<f32> = video.try_into_vec_as::<f32>().expect("f32 readback");
    let frames = (0..f)
        .map(|i| {
            let mut rgb = vec![0u8; h * w * 3];
            for p in 0..h * w {
                for c in 0..3 {
                    let v = data[((c * f + i) * h * w) + p];
                    rgb[p * 3 + c] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
                }
            }
            rgb
        })
        .collect();
    Clip {
        width: w as u32,
        height: h as u32,
        fps,
        frames,
    }
}

/// What a user should know of a model that is not Stable Diffusion, if it is not.
pub fn small_model_note(folder: &Path, models: &Models) -> Option<&'static str> {
    if folder
        .join(crate::commands::pretrain::REPORT_FILE)
        .is_file()
    {
        Some(
            "note: a toy-world model (tav pretrain): it draws coloured shapes moving on road, \
             beach, snow or grass; edits of other videos need SD v1.x weights (--model)",
        )
    } else if models.unet_config.block_out_channels[0] < 320 {
        Some(
            "note: this is a small test model, not Stable Diffusion: real edits need SD v1.x \
             weights (--model PATH/TO/stable-diffusion-v1-5)",
        )
    } else {
        None
    }
}

impl Session {
    pub fn load(choice: &ModelChoice, half: bool, device: Device, ui: &mut Ui) -> Result<Self> {
        let mut choice = choice.clone();
        if choice.path.as_os_str() == "demo" {
            let dir = crate::demo::ensure_demo_model()?;
            ui.say(&format!(
                "using tav's built-in demo model ({}): random weights, so the edits are noise. \
                 Real edits need Stable Diffusion v1.x weights: pass --model PATH/TO/stable-diffusion-v1-5",
                dir.display()
            ));
            choice.path = dir;
        }
        let loras = crate::models::read_loras(&choice.loras)?;
        for lora in &loras {
            ui.say(&format!(
                "LoRA {} ({} layers) merged at scale {}",
                lora.path,
                lora.len(),
                lora.scale
            ));
        }
        let options = LoadOptions {
            variant: choice.variant.clone(),
            f16: half,
            loras: loras.clone(),
            ..Default::default()
        };
        let mut models =
            crate::models::load(&choice, &options, &device, &mut |message| ui.say(message))?;
        let model = choice.path.clone();
        if half {
            models = models.weights_to_f16(&device)?;
            ui.say(
                "f16: weights stored in f16, f16 arithmetic; tuning in mixed precision \
                 (f32 tuned layers, AdamW state and loss; the loss scaled for backward)",
            );
        }
        for r in &models.report {
            ui.record(serde_json::json!({"event": "loaded", "component": r.component, "file": r.file, "parameters": r.parameters}));
            for extra in &r.unexpected {
                ui.say(&format!(
                    "warning: {} has an unexpected tensor `{extra}` (not used)",
                    r.file
                ));
            }
        }
        if let Some(note) = small_model_note(&model, &models) {
            ui.say(note);
        }
        Ok(Self {
            device,
            models,
            attention: VideoAttentionOptions {
                f16_compute: half,
                ..VideoAttentionOptions::default()
            },
            limits: DeviceLimits::default(),
            recompute: crate::gpu::RecomputeChoice::Auto,
            loras: crate::models::lora_uses(&loras),
        })
    }

    /// Refuses a video whose attention would not fit in host memory on burn's CPU backend,
    /// where a failed allocation aborts the process instead of returning an error. (A GPU
    /// adapter reports its own out-of-memory errors.)
    pub fn check_fits(&self, frames: usize, height: usize, width: usize) -> Result<()> {
        check_fits(
            &self.device,
            &self.models.unet_config,
            self.models.vae.downscale,
            VideoShape {
                frames,
                height,
                width,
                batch: 2,
            },
        )
    }

    /// Plans `steps` of a job at this size on this device before anything is allocated, and
    /// refuses one that cannot fit (a buffer over the device's limit, or a peak over its
    /// memory where known), naming the knobs.
    pub fn check_plan(
        &mut self,
        frames: usize,
        height: usize,
        width: usize,
        steps: &[&str],
    ) -> Result<()> {
        let keeping_everything = JobShape {
            frames,
            height,
            width,
            f16: self.attention.f16_compute,
            kernels: self.attention.kernels,
            recompute: false,
        };
        let m = &self.models;
        let configs = (
            m.unet_config.clone(),
            m.vae_config.clone(),
            m.clip_config.clone(),
        );
        self.attention.recompute = crate::commands::resolve_recompute(
            self.recompute,
            &crate::commands::plan::plan_for(&configs, keeping_everything, &self.limits)?,
        );
        let job = JobShape {
            recompute: self.attention.recompute,
            ..keeping_everything
        };
        let plans = crate::commands::plan::plan_for(&configs, job, &self.limits)?;
        check_fits_plan(&plans, steps, &self.limits, &job)
    }

    pub fn embed(&self, prompt: &str) -> Result<Tensor<3>> {
        let ids = self.models.tokenizer.encode(prompt)?;
        self.models.text_encoder.forward(&[ids], &self.device)
    }

    /// The clip's posterior, encoded in frame chunks the device can hold; once per job.
    pub fn encode(&self, clip: &Clip, ui: &mut Ui) -> Result<Posterior> {
        let pixels = clip_to_tensor(clip, &self.device);
        let mut progress = |e: Event| ui.event(e);
        self.models
            .vae
            .encode_frames(pixels, &self.limits, &mut progress)
    }
}

fn meta_for(session: &Session, clip: &ClipSpec, tune: &TuneSpec) -> TuneMeta {
    TuneMeta {
        base_fingerprint: session.models.base_fingerprint().to_string(),
        prompt: tune.prompt.clone(),
        video: clip.video.display().to_string(),
        start: clip.start,
        stride: clip.stride,
        frames: clip.frames,
        width: clip.width,
        height: clip.height,
        steps: tune.steps,
        steps_done: 0,
        seed: tune.seed,
        learning_rate: tune.learning_rate,
        losses: Vec::new(),
        loras: session.loras.clone(),
    }
}

/// Whether a checkpoint belongs to this very run (same inputs and settings).
fn same_run(a: &TuneMeta, b: &TuneMeta) -> bool {
    let strip = |m: &TuneMeta| TuneMeta {
        steps: 0,
        steps_done: 0,
        losses: Vec::new(),
        ..m.clone()
    };
    strip(a) == strip(b)
}

/// Tunes on the clip (`posterior` is its encoding, made once per job); writes
/// `tuned.safetensors`, `checkpoint.safetensors`, `loss.png` in `out`. Resumes from
/// `out/checkpoint.safetensors` when it belongs to the same run.
pub fn tune(
    session: &Session,
    clip_spec: &ClipSpec,
    posterior: Posterior,
    spec: &TuneSpec,
    out: &Path,
    ui: &mut Ui,
) -> Result<UNet3D> {
    let models = &session.models;
    let batch = TuneBatch {
        posterior,
        context: session.embed(&spec.prompt)?,
        scaling_factor: models.vae.scaling_factor,
        attention: session.attention,
    };
    let settings = TuneSettings {
        learning_rate: spec.learning_rate,
        ..TuneSettings::default()
    };
    let mut meta = meta_for(session, clip_spec, spec);
    let mut tuner = Tuner::new(&models.unet, settings);
    let mut unet = models.unet.clone();
    let checkpoint_path = out.join("checkpoint.safetensors");
    if checkpoint_path.exists() && !spec.restart {
        let file = SafetensorsFile::open(&checkpoint_path)?;
        let saved = TunedWeights::from_file(&file)?;
        if same_run(&saved.meta, &meta) && saved.meta.steps_done <= spec.steps {
            unet = apply_tuned(unet, &saved, file.path())?;
            tuner.import_state(&saved.moments, saved.meta.steps_done, &session.device)?;
            meta.losses = saved.meta.losses.clone();
            ui.say(&format!(
                "resuming from {} at step {}",
                checkpoint_path.display(),
                saved.meta.steps_done
            ));
        } else {
            ui.say(&format!(
                "{} is from another run (other inputs or settings): starting afresh (it will be replaced)",
                checkpoint_path.display()
            ));
        }
    }

    let draws = seeded(spec.seed, &batch, &models.schedule, &session.device);
    let run = TuningRun {
        batch: &batch,
        schedule: &models.schedule,
        steps: spec.steps,
        draws: &draws,
    };
    let mut after_step = |step: StepReport| -> Result<Flow> {
        meta.losses.push(step.outcome.loss);
        ui.event(Event {
            phase: Phase::Tune,
            step: step.steps_done,
            total: step.total,
            loss: Some(step.outcome.loss),
        });
        let due =
            spec.checkpoint_every > 0 && step.steps_done.is_multiple_of(spec.checkpoint_every);
        if due || step.steps_done == step.total {
            meta.steps_done = step.steps_done;
            let weights = TunedWeights {
                meta: meta.clone(),
                tensors: step.tuner.trainable_values(step.unet),
                moments: step.tuner.export_moments(),
            };
            check_tuned_finite(&weights.tensors, step.steps_done, spec.learning_rate)?;
            write_atomic(&checkpoint_path, &weights.to_bytes()?)?;
        }
        Ok(Flow::Continue)
    };
    let unet = match tuner.run(unet, &run, &mut after_step) {
        Err(TavError::NonFinite(reason)) => Err(TavError::NonFinite(format!(
            "{reason}. The last good checkpoint is kept at {}",
            checkpoint_path.display()
        ))),
        other => other,
    }?;
    meta.steps_done = tuner.steps_done();
    let tuned = TunedWeights {
        meta: meta.clone(),
        tensors: tuner.trainable_values(&unet),
        moments: Default::default(),
    };
    check_tuned_finite(&tuned.tensors, meta.steps_done, spec.learning_rate)?;
    let tuned_path = out.join("tuned.safetensors");
    write_atomic(&tuned_path, &tuned.to_bytes()?)?;
    ui.record(serde_json::json!({"event": "written", "file": tuned_path.display().to_string(), "tensors": tuned.tensors.len()}));
    if let Some(rgb) = crate::plot::loss_curve(&meta.losses, 480, 240) {
        let path = out.join("loss.png");
        video::write_png(&path, 480, 240, &rgb).map_err(video_error)?;
        ui.record(serde_json::json!({"event": "written", "file": path.display().to_string()}));
    }
    Ok(unet)
}

/// Tuned weights (already read and checked) applied to the session's UNet, refusing
/// weights of another base model.
pub fn apply_tuned_weights(
    session: &Session,
    tuned: &TunedWeights,
    path: &str,
    ui: &mut Ui,
) -> Result<UNet3D> {
    tuned.check_base(session.models.base_fingerprint(), path)?;
    if let Some(warning) = lora_difference(&tuned.meta.loras, &session.loras) {
        ui.say(&format!("warning: {path}: {warning}"));
    }
    apply_tuned(session.models.unet.clone(), tuned, path)
}

/// Reads tuned weights from `path` and applies them (see [`apply_tuned_weights`]).
pub fn load_tuned(session: &Session, path: &Path, ui: &mut Ui) -> Result<(UNet3D, TuneMeta)> {
    let file = SafetensorsFile::open(path)?;
    let tuned = TunedWeights::from_file(&file)?;
    let unet = apply_tuned_weights(session, &tuned, file.path(), ui)?;
    Ok((unet, tuned.meta))
}

/// What differs between the LoRAs weights were tuned with and those loaded now, if anything.
pub fn lora_difference(tuned_with: &[LoraUse], loaded: &[LoraUse]) -> Option<String> {
    let same = |a: &LoraUse, b: &LoraUse| a.fingerprint == b.fingerprint && a.scale == b.scale;
    if tuned_with.len() == loaded.len() && tuned_with.iter().zip(loaded).all(|(a, b)| same(a, b)) {
        return None;
    }
    let list = |l: &[LoraUse]| {
        if l.is_empty() {
            "none".to_string()
        } else {
            l.iter()
                .map(|u| format!("{}:{}", u.file, u.scale))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    Some(format!(
        "these weights were tuned with LoRAs [{}], this run merges [{}]: edits will differ from \
         what tuning saw (pass the same --lora flags)",
        list(tuned_with),
        list(loaded)
    ))
}

/// Inverts the clip (`posterior`, its encoding) and writes one video per prompt, plus a
/// grid of source and edits.
pub fn edit(
    session: &Session,
    unet: &UNet3D,
    clip: &Clip,
    posterior: Posterior,
    spec: &EditSpec,
    out: &Path,
    ui: &mut Ui,
) -> Result<Vec<PathBuf>> {
    if spec.prompts.is_empty() {
        return Err(TavError::InvalidInput(
            "no edit prompts given (--prompt)".into(),
        ));
    }
    let latents = clip_latents(posterior.mean, session.models.vae.scaling_factor);
    let edits = edited_clips(
        session,
        unet,
        latents,
        clip.fps,
        spec,
        session.attention,
        ui,
    )?;
    let mut written = Vec::new();
    let mut rows = vec![clip.clone()];
    for (i, (prompt, edited)) in spec.prompts.iter().zip(edits).enumerate() {
        let stem = format!("{:02}-{}", i + 1, slug(prompt));
        for ext in ["gif", "mp4"] {
            let path = out.join(format!("{stem}.{ext}"));
            match ext {
                "gif" => video::write_gif(&path, &edited),
                _ => video::write_mp4(&path, &edited),
            }
            .map_err(video_error)?;
            ui.record(serde_json::json!({"event": "written", "file": path.display().to_string(), "prompt": prompt}));
            written.push(path);
        }
        if spec.png {
            let dir = out.join(format!("{stem}-frames"));
            video::write_png_frames(&dir, &edited).map_err(video_error)?;
            written.push(dir);
        }
        rows.push(edited);
    }
    let grid = video::grid(&rows);
    for ext in ["gif", "mp4"] {
        let path = out.join(format!("grid.{ext}"));
        match ext {
            "gif" => video::write_gif(&path, &grid),
            _ => video::write_mp4(&path, &grid),
        }
        .map_err(video_error)?;
        ui.record(serde_json::json!({"event": "written", "file": path.display().to_string()}));
        written.push(path);
    }
    Ok(written)
}

/// DDIM-inverts `latents` (`[1, C, F, h, w]`) with the empty prompt, then samples and decodes
/// one edit per prompt of `spec`, attending as `options` says.
pub fn edited_clips(
    session: &Session,
    unet: &UNet3D,
    latents: Tensor<5>,
    fps: f32,
    spec: &EditSpec,
    options: VideoAttentionOptions,
    ui: &mut Ui,
) -> Result<Vec<Clip>> {
    let models = &session.models;
    let uncond = session.embed("")?;
    let mut progress = |e: Event| ui.event(e);
    let inversion = Ddim::new(&models.schedule, spec.inversion_steps)?;
    let sampling = Ddim::new(&models.schedule, spec.steps)?;
    let denoiser = |ddim| Denoiser {
        unet,
        ddim,
        options,
    };
    // Window by window when asked; a clip no longer than its window is one window, which
    // is the whole-clip method exactly (tests/window.rs).
    let frames = latents.dims()[2];
    let window = spec.window.unwrap_or(Window {
        size: frames.max(2),
        overlap: 0,
    });
    let windowed = |ddim| WindowedDenoiser {
        denoiser: denoiser(ddim),
        window,
    };
    let start = windowed(&inversion).invert(latents, uncond.clone(), &mut progress)?;
    check_finite(
        &start,
        "the inverted latents (after DDIM inversion)",
        "the tuned weights or the model are damaged",
    )?;
    let mut edits = Vec::new();
    for (i, prompt) in spec.prompts.iter().enumerate() {
        ui.say(&format!("edit {}: {prompt}", i + 1));
        let cond = session.embed(prompt)?;
        let mut progress = |e: Event| ui.event(e);
        let edited = windowed(&sampling).sample(
            start.clone(),
            cond,
            uncond.clone(),
            spec.guidance,
            &mut progress,
        )?;
        check_finite(
            &edited,
            &format!("the latents of edit {} (after sampling)", i + 1),
            &format!(
                "guidance {} is likely too strong for this model (try 7.5, or a \
                 --guidance-rescale of 0.7)",
                spec.guidance.scale
            ),
        )?;
        let video = decode_video(&models.vae, edited, &session.limits, &mut progress)?;
        let clip = tensor_to_clip(video, fps);
        check_not_black(&clip, &format!("edit {}", i + 1))?;
        edits.push(clip);
    }
    Ok(edits)
}

/// A file-name-safe short form of a prompt.
pub fn slug(prompt: &str) -> String {
    let mut s: String = prompt
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-');
    let s: String = s.chars().take(48).collect();
    if s.is_empty() { "edit".into() } else { s }
}

/// See [`Session::check_fits`].
pub fn check_fits(
    device: &Device,
    unet: &UNetConfig,
    vae_downscale: usize,
    video: VideoShape,
) -> Result<()> {
    if tav_core::kernels::runs_wgsl(device) {
        return Ok(());
    }
    let needed = largest_attention_bytes(unet, vae_downscale, video);
    match crate::gpu::free_host_memory() {
        Some(free) if needed > free => Err(TavError::OutOfMemory(format!(
            "attention over {} frames at {}×{} needs {:.1} GB at once on burn's CPU \
             backend, and this machine has {:.1} GB free: reduce --frames or --width/--height",
            video.frames,
            video.width,
            video.height,
            needed as f64 / 1e9,
            free as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(file: &str, fingerprint: &str, scale: f64) -> LoraUse {
        LoraUse {
            file: file.into(),
            fingerprint: fingerprint.into(),
            scale,
        }
    }

    /// Non-finite latents and tuned values stop the run, naming the step and the setting; an
    /// all-black video is never written.
    #[test]
    fn non_finite_and_black_outputs_are_errors() {
        let device = Device::flex();
        let fine = Tensor::<2>::from_data([[1.0f32, -2.0], [0.5, 3.0]], &device);
        check_finite(&fine, "x", "y").unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            let t = Tensor::<2>::from_data([[1.0f32, bad], [0.5, 3.0]], &device);
            let message = check_finite(&t, "the latents of edit 2", "guidance 90")
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("edit 2") && message.contains("guidance 90"),
                "{message}"
            );
        }
        let clip = |v: u8| Clip {
            width: 2,
            height: 2,
            fps: 8.0,
            frames: vec![vec![v; 12]; 3],
        };
        assert!(check_not_black(&clip(0), "edit 1").is_err());
        check_not_black(&clip(1), "edit 1").unwrap();
        let mut tuned = std::collections::BTreeMap::new();
        tuned.insert(
            "a.to_q.weight".to_string(),
            HostTensor::new(vec![2], vec![1.0, 2.0]),
        );
        check_tuned_finite(&tuned, 3, 3e-5).unwrap();
        tuned.insert(
            "b.to_q.weight".to_string(),
            HostTensor::new(vec![2], vec![1.0, f32::NAN]),
        );
        let message = check_tuned_finite(&tuned, 7, 1e30).unwrap_err().to_string();
        assert!(message.contains("step 7") && message.contains("1000000000000000000000000000000"));
    }

    /// The demo clip draws only the sampled frames, however far in they start.
    #[test]
    fn demo_clip_work_is_bounded_by_the_sample() {
        let started = std::time::Instant::now();
        let sampling = Sampling {
            start: 10_000_000,
            stride: 3,
            count: 2,
        };
        let clip = crate::demo::demo_clip(10_000_004, sampling);
        assert_eq!(clip.frames.len(), 2);
        assert!(started.elapsed().as_secs() < 5);
    }

    /// `tav edit` warns when the LoRAs differ from those tuning saw, by file or scale.
    #[test]
    fn lora_differences_are_named() {
        let style = used("style.safetensors", "aa", 0.8);
        let tuned_with = std::slice::from_ref(&style);
        assert_eq!(lora_difference(tuned_with, tuned_with), None);
        assert_eq!(lora_difference(&[], &[]), None);
        let warning = lora_difference(tuned_with, &[]).unwrap();
        assert!(warning.contains("[style.safetensors:0.8]") && warning.contains("[none]"));
        let rescaled = used("style.safetensors", "aa", 0.5);
        assert!(lora_difference(tuned_with, &[rescaled]).is_some());
        let other_file = used("style.safetensors", "bb", 0.8);
        assert!(lora_difference(&[style], &[other_file]).is_some());
    }
}

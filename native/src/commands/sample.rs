//! `tav sample`: text-to-video with the inflated model and no source clip. Each prompt is
//! sampled by DDIM with classifier-free guidance from seeded noise, the same noise for every
//! prompt, so the videos differ only by what the prompts say. With tuned weights this is
//! the paper's sampling without inversion; without them it shows what the base model knows
//! (for the toy model: whether it draws the colour, shape and background it is asked for).

use super::prelude::*;

use std::path::{Path, PathBuf};

use tav_core::draws::SeededRng;
use tav_core::edit::{Denoiser, Guidance, decode_video};
use tav_core::progress::Event;
use tav_core::schedule::Ddim;
use tav_core::unet::UNet3D;
use tav_core::weights::HostTensor;
use tav_core::{Result, TavError};

use crate::job::{Session, slug, tensor_to_clip, video_error};
use crate::ui::Ui;
use crate::video::{self, Clip};

/// What to sample.
#[derive(Debug, Clone)]
pub struct SampleSpec {
    pub prompts: Vec<String>,
    pub frames: usize,
    /// Frame width and height in pixels; `None` takes the model's own (`sample_size`).
    pub size: Option<usize>,
    pub steps: usize,
    pub guidance: Guidance,
    pub seed: u64,
    pub fps: f32,
}

/// The frame size: the asked one, checked against the VAE, or the model's trained size.
fn frame_size(session: &Session, asked: Option<usize>) -> Result<usize> {
    let downscale = session.models.vae.downscale;
    let size = match asked {
        Some(size) => size,
        None => session
            .models
            .unet_config
            .sample_size
            .map(|latent| latent * downscale)
            .unwrap_or(512),
    };
    if size == 0 || !size.is_multiple_of(64) {
        return Err(TavError::InvalidInput(format!(
            "--size {size} is not a positive multiple of 64"
        )));
    }
    Ok(size)
}

/// Samples one video per prompt with `unet`.
pub fn videos(
    session: &Session,
    unet: &UNet3D,
    spec: &SampleSpec,
    ui: &mut Ui,
) -> Result<Vec<Clip>> {
    if spec.prompts.is_empty() || spec.frames == 0 || spec.steps == 0 {
        return Err(TavError::InvalidInput(
            "sampling needs a prompt, at least one frame and one step".into(),
        ));
    }
    let models = &session.models;
    let size = frame_size(session, spec.size)?;
    session.check_fits(spec.frames, size, size)?;
    let latent = size / models.vae.downscale;
    let shape = [
        1,
        models.unet_config.in_channels,
        spec.frames,
        latent,
        latent,
    ];
    let count = shape.iter().product();
    let noise = HostTensor::new(
        shape.to_vec(),
        SeededRng::for_stream(spec.seed, "sample").normal_vec(count),
    )
    .to_device(&session.device);
    let uncond = session.embed("")?;
    let ddim = Ddim::new(&models.schedule, spec.steps)?;
    let denoiser = Denoiser {
        unet,
        ddim: &ddim,
        options: session.attention,
    };
    let mut clips = Vec::new();
    for (i, prompt) in spec.prompts.iter().enumerate() {
        ui.say(&format!("sample {}: {prompt}", i + 1));
        let cond = session.embed(prompt)?;
        let mut progress = |e: Event| ui.event(e);
        let latents = denoiser.sample(
            noise.clone(),
            cond,
            uncond.clone(),
            spec.guidance,
            &mut progress,
        )?;
        job::check_finite(
            &latents,
            &format!("the latents of sample {} (after sampling)", i + 1),
            &format!(
                "guidance {} is likely too strong for this model",
                spec.guidance.scale
            ),
        )?;
        let video = decode_video(&models.vae, latents, &session.limits, &mut progress)?;
        let clip = tensor_to_clip(video, spec.fps);
        job::check_not_black(&clip, &format!("sample {}", i + 1))?;
        clips.push(clip);
    }
    Ok(clips)
}

/// Writes `NN-slug.gif` per prompt and `grid.gif` (all prompts side by side) into `out`.
pub fn write(out: &Path, prompts: &[String], clips: &[Clip], ui: &mut Ui) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)
        .map_err(|e| TavError::InvalidInput(format!("cannot create {}: {e}", out.display())))?;
    let mut written = Vec::new();
    for (i, (prompt, clip)) in prompts.iter().zip(clips).enumerate() {
        written.push(out.join(format!("{:02}-{}.gif", i + 1, slug(prompt))));
        video::write_gif(written.last().expect("just pushed"), clip).map_err(video_error)?;
    }
    written.push(out.join("grid.gif"));
    video::write_gif(written.last().expect("just pushed"), &video::grid(clips))
        .map_err(video_error)?;
    for path in &written {
        ui.record(serde_json::json!({"event": "written", "file": path.display().to_string()}));
    }
    Ok(written)
}

/// The arguments of `tav sample`.
#[derive(Args)]
pub struct SampleCommand {
    #[command(flatten)]
    pub common: Common,
    /// A prompt; repeat for several videos.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// Tuned weights from `tav tune` to sample with instead of the base model.
    #[arg(long)]
    pub tuned: Option<PathBuf>,
    #[arg(value_parser = crate::cli::frames, long, default_value_t = 8)]
    pub frames: usize,
    /// Width and height in pixels, a multiple of 64 [default: the model's trained size,
    /// 512 for SD v1.x, 64 for the toy model].
    #[arg(value_parser = crate::cli::side, long)]
    pub size: Option<usize>,
    /// DDIM sampling steps.
    #[arg(value_parser = crate::cli::ddim_steps, long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[arg(value_parser = crate::cli::guidance, long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Rescale of the guided prediction toward the conditional one's scale, 0–1.
    #[arg(value_parser = crate::cli::rescale, long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// Seed of the initial noise (shared by every prompt).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `tav sample`.
pub fn command(args: SampleCommand) -> Result<()> {
    let SampleCommand {
        common,
        prompts,
        tuned,
        frames,
        size,
        steps,
        guidance,
        guidance_rescale,
        seed,
    } = args;
    let spec = sample::SampleSpec {
        prompts,
        frames,
        size,
        steps,
        guidance: Guidance {
            scale: guidance,
            rescale: guidance_rescale,
        },
        seed,
        fps: video::DEFAULT_FPS,
    };
    sample_videos(&common, &spec, tuned.as_deref())
}

pub(crate) fn sample_videos(
    common: &Common,
    spec: &sample::SampleSpec,
    tuned: Option<&std::path::Path>,
) -> Result<()> {
    let mut ui = ui_for(common);
    let session = open_session(common, &mut ui)?;
    let unet = match tuned {
        Some(path) => job::load_tuned(&session, path, &mut ui)?.0,
        None => session.models.unet.clone(),
    };
    let clips = sample::videos(&session, &unet, spec, &mut ui)?;
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("outputs/sample"));
    let written = sample::write(&out, &spec.prompts, &clips, &mut ui)?;
    ui.finish();
    ui.say(&format!(
        "wrote {} files to {}",
        written.len(),
        out.display()
    ));
    Ok(())
}

//! `tav sample`: text-to-video with the inflated model and no source clip. Each prompt is
//! sampled by DDIM with classifier-free guidance from seeded noise, the same noise for every
//! prompt, so the videos differ only by what the prompts say. With tuned weights this is
//! the paper's sampling without inversion; without them it shows what the base model knows
//! (for the toy model: whether it draws the colour, shape and background it is asked for).

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
        let video = decode_video(&models.vae, latents, &session.limits, &mut progress)?;
        clips.push(tensor_to_clip(video, spec.fps));
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

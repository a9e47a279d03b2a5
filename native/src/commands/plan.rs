//! `tav plan`: the memory plan of a job (peak device memory, largest single buffer and what
//! dominates, for a UNet forward, a tuning step, an inversion step and a guided sampling
//! step) from the configs alone, before anything is allocated. `tav tune/edit/run` check
//! the same plan against the opened device and refuse a job that cannot fit.

use super::prelude::*;

use std::path::PathBuf;

use burn::tensor::Device;
use tav_core::Result;
use tav_core::checkpoint::{Folder, read_configs};
use tav_core::config::{ClipConfig, UNetConfig, VaeConfig};
use tav_core::limits::{DeviceLimits, human_bytes};
use tav_core::plan::{JobShape, PlanInput, StepPlan, plan};

/// `--config`: a model size known without a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelSize {
    /// Stable Diffusion v1.5.
    Sd15,
    /// The built-in demo model.
    Tiny,
}

/// The three configs for `--config` or `--model`.
pub fn configs(
    size: Option<ModelSize>,
    model: Option<&PathBuf>,
) -> Result<(UNetConfig, VaeConfig, ClipConfig)> {
    match (size, model) {
        (_, Some(dir)) if dir.is_dir() => read_configs(&Folder(dir.clone())),
        // A single-file checkpoint: configs from its tensors' shapes (header only).
        (_, Some(file)) if !file.exists() => Err(tav_core::TavError::MissingFile {
            path: file.display().to_string(),
            what: "the model: a diffusers folder or a .safetensors checkpoint".into(),
        }),
        (_, Some(file)) => {
            let shown = file.display().to_string();
            tav_core::single_file::refuse_pickle(&shown)?;
            let shapes = tav_core::weights::SafetensorsFile::open(file)?.shapes();
            tav_core::single_file::identify(&shapes, &shown)?;
            let c = tav_core::single_file::infer_configs(&shapes, &shown)?;
            Ok((c.unet, c.vae, c.clip))
        }
        (Some(ModelSize::Tiny), None) => Ok(crate::demo::tiny_configs()),
        (Some(ModelSize::Sd15) | None, None) => Ok((
            UNetConfig::sd_v1_5(),
            VaeConfig::sd_v1_5(),
            ClipConfig::sd_v1_5(),
        )),
    }
}

/// The plan of a job with these configs.
pub fn plan_for(
    configs: &(UNetConfig, VaeConfig, ClipConfig),
    job: JobShape,
    limits: &DeviceLimits,
) -> Result<Vec<StepPlan>> {
    crate::jobfile::check_video(job.frames, job.width, job.height)?;
    let input = PlanInput::new(&configs.0, &configs.1, &configs.2, job, &Device::flex())?;
    Ok(plan(&input, limits))
}

/// Prints the plan as a table: each step with the frames the UNet sees in it.
pub fn print(
    plans: &[StepPlan],
    job: &JobShape,
    limits: &DeviceLimits,
    frames_of: impl Fn(&str) -> usize,
) {
    println!(
        "{}×{}, {}, attention {} (buffers capped at {}):",
        job.width,
        job.height,
        if job.f16 { "f16" } else { "f32" },
        if job.kernels { "kernels" } else { "plain" },
        human_bytes(limits.max_buffer_bytes)
    );
    println!(
        "{:<10} {:>7} {:>11} {:>15}  dominated by",
        "step", "frames", "peak", "largest buffer"
    );
    for p in plans {
        println!(
            "{:<10} {:>7} {:>11} {:>15}  {}",
            p.step,
            frames_of(p.step),
            human_bytes(p.peak_bytes),
            human_bytes(p.largest_buffer_bytes),
            p.dominant
        );
    }
}

/// The arguments of `tav plan`.
#[derive(Args)]
pub struct PlanCommand {
    /// A model size: sd15 (Stable Diffusion v1.5) or tiny (the demo model).
    #[arg(long, value_enum, conflicts_with = "model")]
    pub config: Option<plan::ModelSize>,
    /// A checkpoint folder (diffusers layout) or single-file checkpoint: its configs are
    /// read (or inferred from its shapes), not its weights.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A diffusers folder whose configs to plan with (for a single file whose shapes
    /// cannot tell them).
    #[arg(long, conflicts_with = "config")]
    pub model_config: Option<PathBuf>,
    /// Frames of the clip to edit (and to tune on, unless --tune-frames or --window).
    #[arg(value_parser = crate::cli::frames, long, default_value_t = 24)]
    pub frames: usize,
    /// Edit in windows of this many frames (`tav edit --window`): the forward, inversion and
    /// sampling steps are planned at W + 1 frames (the clip's frame 0 rides along as every
    /// window's anchor) whatever --frames is.
    #[arg(value_parser = crate::cli::frames, long)]
    pub window: Option<usize>,
    /// Frames the tuning step sees [default: --frames; with --window, the window's size].
    #[arg(value_parser = crate::cli::frames, long)]
    pub tune_frames: Option<usize>,
    /// Width in pixels, a multiple of 64.
    #[arg(value_parser = crate::cli::side, long, default_value_t = 512)]
    pub width: usize,
    /// Height in pixels, a multiple of 64.
    #[arg(value_parser = crate::cli::side, long, default_value_t = 512)]
    pub height: usize,
    /// Weights and inference in f16; tuning in mixed precision (blocks' inputs kept in f16).
    #[arg(long)]
    pub f16: bool,
    /// Attention: kernels (the default) or plain.
    #[arg(long, value_enum, default_value = "kernels")]
    pub attention: gpu::AttentionChoice,
    /// Tuning: `on` keeps only each block's input for the backward pass and runs the
    /// block again there; `off` keeps every activation; `auto` recomputes when the step
    /// would otherwise be planned over 2 GiB.
    #[arg(long, value_enum, default_value = "auto")]
    pub recompute: gpu::RecomputeChoice,
    /// The device's largest buffer in MiB, which sizes the chunked work (2048: NVIDIA
    /// and AMD Vulkan drivers; lavapipe and WebGPU's default: 128).
    #[arg(long, default_value_t = 2048)]
    pub max_buffer_mib: u64,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tav plan`.
pub fn command(args: PlanCommand) -> Result<()> {
    let PlanCommand {
        config,
        model,
        model_config,
        frames,
        window,
        tune_frames,
        width,
        height,
        f16,
        attention,
        recompute,
        max_buffer_mib,
        json,
    } = args;
    let configs = plan::configs(config, model_config.as_ref().or(model.as_ref()))?;
    let limits = tav_core::limits::DeviceLimits {
        max_buffer_bytes: max_buffer_mib << 20,
        memory_bytes: None,
    };
    // What the UNet sees at once: the window and its anchor, or the whole clip.
    let unet_frames = window.map_or(frames, |w| frames.min(w + 1));
    let tune_frames = tune_frames.unwrap_or(window.map_or(frames, |w| frames.min(w)));
    let shape = |frames| tav_core::plan::JobShape {
        frames,
        height,
        width,
        f16,
        kernels: attention == gpu::AttentionChoice::Kernels,
        recompute: false,
    };
    let recompute = resolve_recompute(
        recompute,
        &plan::plan_for(&configs, shape(tune_frames), &limits)?,
    );
    let tuning = plan::plan_for(
        &configs,
        tav_core::plan::JobShape {
            recompute,
            ..shape(tune_frames)
        },
        &limits,
    )?;
    let job = tav_core::plan::JobShape {
        recompute,
        ..shape(unet_frames)
    };
    let editing = plan::plan_for(&configs, job, &limits)?;
    // The tuning step from its own frames, the others from what the UNet sees when editing.
    let plans: Vec<StepPlan> = editing
        .into_iter()
        .map(|p| match p.step {
            "tuning" => tuning
                .iter()
                .find(|t| t.step == "tuning")
                .cloned()
                .expect("the plan has a tuning step"),
            _ => p,
        })
        .collect();
    let frames_of = |step: &str| {
        if step == "tuning" {
            tune_frames
        } else {
            unet_frames
        }
    };
    let (down, channels) = (configs.1.downscale(), configs.1.latent_channels);
    let latent_bytes = |frames: usize| {
        (frames * channels * (height / down) * (width / down) * if f16 { 2 } else { 4 }) as u64
    };
    if json {
        for p in &plans {
            println!(
                "{}",
                serde_json::json!({
                    "step": p.step, "peak_bytes": p.peak_bytes,
                    "largest_buffer_bytes": p.largest_buffer_bytes, "dominant": p.dominant,
                    "frames": frames_of(p.step), "clip_frames": frames, "window": window,
                    "clip_latents_bytes": latent_bytes(frames),
                    "width": width, "height": height,
                    "f16": f16, "kernels": job.kernels,
                    "max_buffer_bytes": limits.max_buffer_bytes,
                })
            );
        }
        return Ok(());
    }
    if let Some(w) = window {
        println!(
            "{frames} frames edited in windows of {w} (the UNet sees {unet_frames} at once, \
             the anchor included), tuned on {tune_frames}; the clip's latents take {} beside \
             each step's peak",
            human_bytes(latent_bytes(frames))
        );
    } else if tune_frames != frames {
        println!("{frames} frames edited, tuned on {tune_frames}");
    }
    plan::print(&plans, &job, &limits, frames_of);
    Ok(())
}

//! `tav`: Tune-A-Video on any GPU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Device, DeviceKind, Distribution, Tensor};
use clap::{Parser, Subcommand};
use tav_core::checkpoint::{Folder, LoadOptions, Models};
use tav_core::transformer::VideoAttentionOptions;

#[derive(Parser)]
#[command(
    name = "tav",
    version,
    about = "Tune-A-Video on WebGPU: one-shot video editing with Stable Diffusion"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a diffusers checkpoint folder, inflate its UNet to video and run every component
    /// once on random input, printing what was loaded and checked.
    Check {
        /// The checkpoint folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
        /// scheduler/).
        #[arg(long, default_value = "../shared/golden/tiny-a/model")]
        model: PathBuf,
        /// Temporal-layer weights (safetensors, reference key names); default: new layers
        /// initialised as the reference does.
        #[arg(long)]
        temporal: Option<PathBuf>,
        /// Frames of the random test video.
        #[arg(long, default_value_t = 4)]
        frames: usize,
        /// Width and height of the random test video, in pixels (a multiple of 64).
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Prompt to encode.
        #[arg(long, default_value = "a man is skiing")]
        prompt: String,
        /// Weights variant to read, e.g. `fp16` for `*.fp16.safetensors`.
        #[arg(long)]
        variant: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            model,
            temporal,
            frames,
            size,
            prompt,
            variant,
        } => check(model, temporal, frames, size, &prompt, variant),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(
    model: PathBuf,
    temporal: Option<PathBuf>,
    frames: usize,
    size: usize,
    prompt: &str,
    variant: Option<String>,
) -> tav_core::Result<()> {
    if size == 0 || !size.is_multiple_of(64) {
        return Err(tav_core::TavError::InvalidInput(format!(
            "--size {size} is not a positive multiple of 64"
        )));
    }
    if frames == 0 {
        return Err(tav_core::TavError::InvalidInput(
            "--frames must be at least 1".into(),
        ));
    }
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let temporal = temporal
        .map(|p| tav_core::weights::SafetensorsFile::open(&p))
        .transpose()?;
    let started = Instant::now();
    let options = LoadOptions {
        variant,
        ..Default::default()
    };
    let models = Models::load(&Folder(model.clone()), temporal.as_ref(), &options, &device)?;
    println!(
        "loaded {} in {:.1} s",
        model.display(),
        started.elapsed().as_secs_f64()
    );
    for r in &models.report {
        println!(
            "  {:<13} {:>4} tensors {:>12} parameters  from {}",
            r.component, r.tensors, r.parameters, r.file
        );
        for extra in &r.unexpected {
            println!("    warning: unexpected tensor `{extra}` (not used)");
        }
    }
    if models.unet_config.block_out_channels[0] < 320 {
        println!(
            "note: this is a tiny test model: real edits need Stable Diffusion v1.x weights (--model PATH_TO_SD_FOLDER)"
        );
    }

    let ids = models.tokenizer.encode(prompt)?;
    let used = ids
        .iter()
        .rposition(|&i| i != tav_core::tokenizer::EOS)
        .map_or(1, |p| p + 2);
    println!(
        "tokenizer     {prompt:?} → {used} tokens, padded to {}",
        ids.len()
    );
    let text = models.text_encoder.forward(&[ids], &device)?;
    report("text encoder", &text.clone().reshape([-1]))?;

    let latent_size = size / models.vae.downscale;
    let pixels = Tensor::<4>::random(
        [frames, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let posterior = models.vae.encode(pixels)?;
    report("vae encode", &posterior.mean.clone().reshape([-1]))?;
    let decoded = models.vae.decode(posterior.mean.clone());
    report("vae decode", &decoded.reshape([-1]))?;

    let channels = models.vae.latent_channels;
    let latents = Tensor::<5>::random(
        [1, channels, frames, latent_size, latent_size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let started = Instant::now();
    let timesteps = models.schedule.ddim_timesteps(50)?;
    let eps = models.unet.forward(
        latents.clone(),
        &[timesteps[0] as f64],
        text,
        VideoAttentionOptions::default(),
    )?;
    report("unet 3d", &eps.clone().reshape([-1]))?;
    let stepped = models.schedule.ddim_step(eps, timesteps[0], latents, 50);
    report("ddim step", &stepped.reshape([-1]))?;
    println!(
        "unet forward + ddim step: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    println!("all components ran; outputs are finite");
    Ok(())
}

/// Prints a tensor's size and statistics; NaN or infinity is an error.
fn report(name: &str, t: &Tensor<1>) -> tav_core::Result<()> {
    let values: Vec<f32> = t
        .clone()
        .try_into_vec_as::<f32>()
        .map_err(|e| tav_core::TavError::Device(format!("reading back {name}: {e:?}")))?;
    let finite = values.iter().all(|v| v.is_finite());
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
    let std = (values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / values.len() as f64)
        .sqrt();
    println!(
        "{name:<13} {} values, mean {mean:+.4}, std {std:.4}{}",
        values.len(),
        if finite { "" } else { "  NOT FINITE" }
    );
    if !finite {
        return Err(tav_core::TavError::Device(format!(
            "{name} produced NaN or infinity"
        )));
    }
    Ok(())
}

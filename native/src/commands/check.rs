//! `tav check`: load a model and run every component once on random input.

use super::prelude::*;

/// The arguments of `tav check`.
#[derive(Args)]
pub struct CheckCommand {
    #[command(flatten)]
    pub common: Common,
    /// Frames of the random test video.
    #[arg(value_parser = crate::cli::frames, long, default_value_t = 4)]
    pub frames: usize,
    /// Width and height of the random test video, in pixels (a multiple of 64).
    #[arg(value_parser = crate::cli::side, long, default_value_t = 128)]
    pub size: usize,
}

/// Runs `tav check`.
pub fn command(args: CheckCommand) -> Result<()> {
    let CheckCommand {
        common,
        frames,
        size,
    } = args;
    check(&common, frames, size)
}

pub(crate) fn check(common: &Common, frames: usize, size: usize) -> Result<()> {
    jobfile::check_video(frames, size, size)?;
    let mut ui = ui_for(common);
    let opened = gpu::open(&common.device).map_err(TavError::Device)?;
    let kernels = gpu::AttentionChoice::resolve(common.attention, common.kernels, &opened.device)
        .map_err(TavError::InvalidInput)?;
    let (device, adapter, limits) = (opened.device, opened.description, opened.limits);
    println!("GPU adapter: {adapter}");
    let mut choice = model_choice(common);
    if choice.path.as_os_str() == "demo" {
        choice.path = demo::ensure_demo_model()?;
    }
    let model = choice.path.clone();
    let started = Instant::now();
    let loras = models::read_loras(&choice.loras)?;
    let options = LoadOptions {
        variant: common.variant.clone(),
        loras: loras.clone(),
        ..Default::default()
    };
    let models = models::load(&choice, &options, &device, &mut |m| println!("{m}"))?;
    println!(
        "loaded {} in {:.1} s",
        model.display(),
        started.elapsed().as_secs_f64()
    );
    for lora in &loras {
        println!(
            "  LoRA {} ({} layers) merged at scale {}",
            lora.path,
            lora.len(),
            lora.scale
        );
    }
    for r in &models.report {
        println!(
            "  {:<13} {:>4} tensors {:>12} parameters  from {}",
            r.component, r.tensors, r.parameters, r.file
        );
        for extra in &r.unexpected {
            println!("    warning: unexpected tensor `{extra}` (not used)");
        }
    }
    if let Some(note) = job::small_model_note(&model, &models) {
        ui.say(note);
    }
    let prompt = "a man is skiing";
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
    job::check_fits(
        &device,
        &models.unet_config,
        models.vae.downscale,
        tav_core::footprint::VideoShape {
            frames,
            height: size,
            width: size,
            batch: 1,
        },
    )?;
    let latent_size = size / models.vae.downscale;
    let pixels = Tensor::<4>::random(
        [frames, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let posterior = models
        .vae
        .encode_frames(pixels, &limits, &mut tav_core::progress::silent)?;
    report("vae encode", &posterior.mean.clone().reshape([-1]))?;
    let encoded = tav_core::tune::clip_latents(posterior.mean, models.vae.scaling_factor);
    let decoded = tav_core::edit::decode_video(
        &models.vae,
        encoded,
        &limits,
        &mut tav_core::progress::silent,
    )?;
    report("vae decode", &decoded.reshape([-1]))?;
    let channels = models.vae.latent_channels;
    let latents = Tensor::<5>::random(
        [1, channels, frames, latent_size, latent_size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let started = Instant::now();
    let ddim = tav_core::schedule::Ddim::new(&models.schedule, 50)?;
    let first = ddim.timesteps()[0];
    let eps = models.unet.forward(
        latents.clone(),
        &[first as f64],
        text,
        VideoAttentionOptions {
            kernels,
            ..VideoAttentionOptions::default()
        },
    )?;
    report("unet 3d", &eps.clone().reshape([-1]))?;
    let stepped = ddim.step(eps, first, latents);
    report("ddim step", &stepped.reshape([-1]))?;
    println!(
        "unet forward + ddim step: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    println!("all components ran; outputs are finite");
    Ok(())
}

/// Prints a tensor's size and statistics; NaN or infinity is an error.
pub(crate) fn report(name: &str, t: &Tensor<1>) -> Result<()> {
    let values: Vec<f32> = t
        .clone()
        .try_into_vec_as::<f32>()
        .map_err(|e| TavError::Device(format!("reading back {name}: {e:?}")))?;
    let finite = values.iter().all(|v| v.is_finite());
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
    let std = (values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / values.len() as f64)
        .sqrt();
    println!(
        "{name:<13} {} values, mean {mean:+.4}, std {std:.4}",
        values.len()
    );
    if !finite {
        return Err(TavError::NonFinite(format!(
            "{name} produced NaN or infinity"
        )));
    }
    Ok(())
}

//! Memory that scales linearly with frames: a tuning step at SD-scale tokens (64×64
//! latents, 4,096 tokens per frame, 8 frames) with tiny widths. Through the WGSL kernels it
//! runs on lavapipe (128 MiB max binding); through the plain path, whose sparse-causal score
//! matrix alone is frames × heads × 4096 × 8192 floats, it cannot.

use burn::tensor::{Distribution, Tensor};
use tav_core::checkpoint::{Folder, LoadOptions, load_unet};
use tav_core::transformer::VideoAttentionOptions;
use tav_core::tune::{StepDraws, TuneBatch, TuneSettings, Tuner};
use tav_core::vae::Posterior;
use tav_tests::{device, golden_dirs};

fn step(kernels: bool) -> Result<f32, String> {
    let device = device();
    let model = golden_dirs()[0].join("model");
    let (unet, cfg, _) = load_unet(&Folder(model), None, &LoadOptions::default(), &device)
        .map_err(|e| e.to_string())?;
    let (frames, side, channels) = (8, 64, cfg.in_channels);
    let latent =
        |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let batch = TuneBatch {
        posterior: Posterior {
            mean: latent([frames, channels, side, side]),
            logvar: latent([frames, channels, side, side]).mul_scalar(0.1),
        },
        context: Tensor::random(
            [1, 77, cfg.cross_attention_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        ),
        scaling_factor: 0.18215,
        attention: VideoAttentionOptions {
            kernels,
            ..VideoAttentionOptions::default()
        },
    };
    let draws = StepDraws {
        vae_eps: latent([frames, channels, side, side]),
        noise: Tensor::random(
            [1, channels, frames, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        ),
        timestep: 500,
    };
    let mut tuner = Tuner::new(&unet, TuneSettings::default());
    let unet = tuner.train_mode(unet);
    let schedule =
        tav_core::schedule::Schedule::new(&tav_core::config::SchedulerConfig::sd_v1_5()).unwrap();
    // A failed GPU allocation surfaces as a panic at readback; catch it as the outcome.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tuner
            .step(unet, &batch, draws, &schedule, false)
            .map(|(_, o)| o.loss)
    }));
    match outcome {
        Ok(Ok(loss)) => Ok(loss),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

#[test]
fn tuning_at_4096_tokens_and_8_frames_fits_only_with_the_kernels() {
    let started = std::time::Instant::now();
    let with_kernels = step(true);
    println!(
        "kernels: {with_kernels:?} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let loss = with_kernels.expect("the kernel path runs the tuning step");
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");

    let plain = step(false);
    let shown: String = format!("{plain:?}").chars().take(300).collect();
    println!("plain path: {shown}");
    let message = plain.expect_err("the plain path cannot hold the score matrix");
    assert!(
        message.contains("allocate"),
        "it fails for memory: {message}"
    );
}

/// Encoding a clip at SD v1.5's VAE widths (random weights) whose whole-clip activations
/// cross lavapipe's 128 MiB binding: 20 frames of 128², where the first level's padded
/// activation is 20 × 128 × 129² floats (170 MB). Encoded in frame chunks sized from the
/// adapter's limit, it runs to the end, and chunks change nothing: the first two frames
/// match an encoding of those two alone.
#[test]
fn vae_encode_of_a_clip_over_the_binding_limit_runs_in_frame_chunks() {
    use tav_core::config::VaeConfig;
    use tav_core::limits::DeviceLimits;
    use tav_core::progress::Event;
    use tav_core::vae::Vae;
    use tav_core::weights::RandomInit;

    let device = device();
    let vae = Vae::load(
        &RandomInit { seed: 3 }.builder(&device),
        &VaeConfig::sd_v1_5(),
    )
    .unwrap();
    let (frames, side) = (20, 128);
    let pixels = Tensor::<4>::random(
        [frames, 3, side, side],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let lavapipe = DeviceLimits::from_wgpu(u64::MAX, 128 << 20);
    let per_frame = vae.encoder_frame_elements(side, side) * 4;
    assert!(
        per_frame * frames as u64 > lavapipe.max_buffer_bytes,
        "the whole clip at once is over the limit ({per_frame} B a frame)"
    );
    let started = std::time::Instant::now();
    let mut chunks = Vec::new();
    let posterior = vae
        .encode_frames(pixels.clone(), &lavapipe, &mut |e: Event| {
            chunks.push(e.step)
        })
        .expect("encodes in chunks");
    println!(
        "{frames} frames of {side}² in chunks ending at {chunks:?}: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(chunks.len() > 1, "more than one chunk: {chunks:?}");
    assert_eq!(chunks.last(), Some(&frames));
    assert_eq!(posterior.mean.dims(), [frames, 4, side / 8, side / 8]);
    let mean = tav_tests::to_vec(posterior.mean.clone());
    assert!(mean.iter().all(|v| v.is_finite()));
    let alone = vae.encode(pixels.narrow(0, 0, 2)).unwrap();
    let head = tav_tests::to_vec(posterior.mean.narrow(0, 0, 2));
    let err = tav_tests::rel_error(&head, &tav_tests::to_vec(alone.mean));
    assert!(
        err < 1e-5,
        "chunked and unchunked encodings differ: {err:.2e}"
    );
}

//! Memory that scales linearly with frames: a tuning step at 2,304 tokens per frame (48×48
//! latents, 1 frame) with tiny widths. Through the WGSL kernels it runs on lavapipe (128 MiB
//! max binding); through the plain path, whose sparse-causal score matrix alone is frames ×
//! heads × 2304 × 4608 floats (170 MB), it cannot. (At 64×64 latents the kernels took over 13
//! minutes with 8 frames, and over 6 with 2, on lavapipe once they ran their rows to the end in
//! passes, 48×48 × 2 frames 295 s: before, llvmpipe's loop cap cut them short.)

use burn::tensor::{Distribution, Tensor};
use tav_core::checkpoint::{Folder, LoadOptions, load_unet};
use tav_core::draws::SeededRng;
use tav_core::transformer::VideoAttentionOptions;
use tav_core::tune::{StepOutcome, TuneBatch, TuneSettings, Tuner, seeded_draws};
use tav_core::vae::Posterior;
use tav_core::weights::HostTensor;
use tav_tests::f16_bounds::{Depths, f16_bound, mixed_precision_bound, roundings_per_layer};
use tav_tests::{device, golden_dirs};

/// One tuning step's shape and options.
#[derive(Debug, Clone, Copy)]
struct StepShape {
    frames: usize,
    height: usize,
    width: usize,
    kernels: bool,
    recompute: bool,
    /// Mixed precision (`--f16`): recomputed blocks keep their inputs in f16.
    f16: bool,
}

/// One tuning step of the first golden set's UNet on seeded draws: its outcome (gradients
/// included when asked) and the device memory the pool reserved for it, or the error.
fn step(shape: StepShape, want_grads: bool) -> Result<(StepOutcome, Option<u64>), String> {
    let device = device();
    device.memory_cleanup();
    let model = golden_dirs()[0].join("model");
    let (unet, cfg, _) = load_unet(&Folder(model), None, &LoadOptions::default(), &device)
        .map_err(|e| e.to_string())?;
    let (f, c, h, w) = (shape.frames, cfg.in_channels, shape.height, shape.width);
    let mut rng = SeededRng::new(11);
    let mut latent = |dims: Vec<usize>| {
        let n = dims.iter().product();
        HostTensor::new(dims, rng.normal_vec(n)).to_device::<4>(&device)
    };
    let batch = TuneBatch {
        posterior: Posterior {
            mean: latent(vec![f, c, h, w]),
            logvar: latent(vec![f, c, h, w]).mul_scalar(0.1),
        },
        context: HostTensor::new(
            vec![1, 77, cfg.cross_attention_dim],
            rng.normal_vec(77 * cfg.cross_attention_dim),
        )
        .to_device(&device),
        scaling_factor: 0.18215,
        attention: VideoAttentionOptions {
            kernels: shape.kernels,
            recompute: shape.recompute,
            f16_compute: shape.f16,
            ..VideoAttentionOptions::default()
        },
    };
    let draws = seeded_draws(3, 0, [f, c, h, w], 1000, &device);
    let mut tuner = Tuner::new(&unet, TuneSettings::default());
    let unet = tuner.train_mode(unet);
    let schedule =
        tav_core::schedule::Schedule::new(&tav_core::config::SchedulerConfig::sd_v1_5()).unwrap();
    // A failed GPU allocation surfaces as a panic at readback; catch it as the outcome.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tuner
            .step(unet, &batch, draws, &schedule, want_grads)
            .map(|(_, o)| o)
    }));
    let reserved = device.memory_pool_usage().map(|u| u.bytes_reserved);
    match outcome {
        Ok(Ok(outcome)) => Ok((outcome, reserved)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

#[test]
fn tuning_at_2304_tokens_fits_only_with_the_kernels() {
    let started = std::time::Instant::now();
    let at = |kernels| StepShape {
        frames: 1,
        height: 48,
        width: 48,
        kernels,
        // What fits here is the attention's (no score matrix); recompute would only add time.
        recompute: false,
        f16: false,
    };
    let with_kernels = step(at(true), false).map(|(o, _)| o.loss);
    println!(
        "kernels: {with_kernels:?} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let loss = with_kernels.expect("the kernel path runs the tuning step");
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");

    let plain = step(at(false), false).map(|(o, _)| o.loss);
    let shown: String = format!("{plain:?}").chars().take(300).collect();
    println!("plain path: {shown}");
    let message = plain.expect_err("the plain path cannot hold the score matrix");
    assert!(
        message.contains("allocate"),
        "it fails for memory: {message}"
    );
}

/// Block-level recompute changes what a tuning step holds, not what it computes: on a shape
/// other than the golden set's (2 frames of 16×24 latents, through the kernels: the plain
/// path's run with recompute off is the golden harness's) the loss and every trainable
/// layer's gradient match the step that keeps all its activations. (The reserved bytes are
/// printed only: the tests of this file share one device pool when run together; the peak is
/// checked in a process of its own by `tav bench --recompute`, `tests/e2e_cli.rs`. Alone, at 3
/// frames of 24×40: 191 MB keeping everything, 64 MB with recompute.)
#[test]
fn recompute_gives_the_same_loss_and_gradients() {
    let at = |recompute, f16| StepShape {
        frames: 2,
        height: 16,
        width: 24,
        kernels: true,
        recompute,
        f16,
    };
    let (kept, kept_bytes) = step(at(false, false), true).expect("the step keeping everything");
    let (again, again_bytes) = step(at(true, false), true).expect("the step with recompute");
    let (worst, worst_key) = worst_gradient_error(&kept, &again);
    println!(
        "loss {} vs {}, worst gradient rel.err {worst:.2e} ({worst_key}); pool reserved \
         {kept_bytes:?} B keeping everything, {again_bytes:?} B with recompute (shared pool)",
        kept.loss, again.loss
    );
    assert!((kept.loss - again.loss).abs() <= 1e-6 * kept.loss.abs());
    assert!(worst < 1e-4, "gradients differ: {worst:.2e} at {worst_key}");

    // Mixed precision: f16 arithmetic and activations (the blocks' inputs kept in f16), f32
    // tuned layers and loss, the loss scaled for backward: within the stated bounds.
    if !tav_core::precision::supports_f16(&device()) {
        println!("this adapter has no f16 storage: mixed precision is not checked here");
        return;
    }
    let (mixed, _) = step(at(true, true), true).expect("the mixed-precision step");
    let (worst, worst_key) = worst_gradient_error(&kept, &mixed);
    // Each layer's gradient, from f16's precision over the UNet's depth forward and backward
    // (tests/src/f16_bounds.rs; measured on tiny-a 7.6e-3 at the worst layer, a bias summing
    // f16 gradients of every token; 4.0e-2 without loss scaling, whose gradients sink into
    // f16's subnormals). No allowance for cancellation: errors are measured against at least
    // 1% of the largest layer's norm. The loss comes through the forward pass alone.
    let depths = Depths::of_model(&golden_dirs()[0].join("model"));
    let gradient_bound = mixed_precision_bound(&depths);
    let loss_bound = f16_bound(depths.unet * roundings_per_layer(true));
    println!(
        "mixed precision: loss {} vs {}, worst gradient rel.err {worst:.2e} ({worst_key}) \
         (bound {gradient_bound:.1e})",
        mixed.loss, kept.loss
    );
    assert!(((kept.loss - mixed.loss).abs() as f64) <= loss_bound * kept.loss.abs() as f64);
    assert!(
        worst < gradient_bound,
        "mixed-precision gradients differ: {worst:.2e} at {worst_key}"
    );
}

/// The largest relative error of any layer's gradient in `b` against `a`, and the layer;
/// every layer of `a` must have one in `b`. A gradient that is zero in exact arithmetic
/// (a bias just before a GroupNorm, which removes any constant shift) comes out as rounding
/// noise ten million times smaller than the others, and recomputing changes the order of that
/// rounding: errors are measured against at least 1% of the largest layer's norm.
fn worst_gradient_error<'a>(a: &'a StepOutcome, b: &StepOutcome) -> (f64, &'a str) {
    let (a, b) = (a.grads.as_ref().unwrap(), b.grads.as_ref().unwrap());
    assert_eq!(a.len(), b.len(), "every layer gets a gradient");
    assert!(!a.is_empty());
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let floor = 1e-2 * a.values().map(|g| norm(&g.data)).fold(0.0, f64::max);
    a.iter()
        .map(|(key, g)| {
            let diff: Vec<f32> = g
                .data
                .iter()
                .zip(&b[key].data)
                .map(|(x, y)| x - y)
                .collect();
            (norm(&diff) / norm(&g.data).max(floor), key.as_str())
        })
        .fold(
            (0.0, ""),
            |acc, (e, k)| if e > acc.0 { (e, k) } else { acc },
        )
}

/// The guided feed-forward at SD v1.5's finest width (320, GEGLU to 2 × 1280) over a batch
/// of 2 × 8 frames of 32×32 latents (a 256² video): its projection is 16,384 × 2,560 floats
/// (168 MB), over lavapipe's 128 MiB binding, so unchunked it cannot run there. In row
/// chunks sized from the adapter's limit it runs to the end, and chunks change nothing: the
/// first frame's rows match the feed-forward of that frame alone.
#[test]
fn guided_feed_forward_over_the_binding_limit_runs_in_row_chunks() {
    use tav_core::transformer::FeedForward;
    use tav_core::weights::RandomInit;

    let device = device();
    let p = RandomInit { seed: 5 }.builder(&device);
    let ff = FeedForward::load(&p.sub("ff"), 320).unwrap();
    let (items, tokens) = (2 * 8, 32 * 32);
    let lavapipe = 128u64 << 20;
    let wide_bytes = (items * tokens * 2 * 4 * 320 * 4) as u64;
    assert!(wide_bytes > lavapipe, "the projection is over the limit");
    let x = Tensor::<3>::random(
        [items, tokens, 320],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let started = std::time::Instant::now();
    let out = tav_tests::to_vec(ff.forward(x.clone(), lavapipe, true));
    println!(
        "feed-forward over {items} × {tokens} tokens in chunks: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.len(), items * tokens * 320);
    assert!(out.iter().all(|v| v.is_finite()));
    let alone = tav_tests::to_vec(ff.forward(x.narrow(0, 0, 1), u64::MAX, true));
    let err = tav_tests::rel_error(&out[..tokens * 320], &alone);
    assert!(err < 1e-5, "chunked and unchunked differ: {err:.2e}");
}

/// The VAE in frame chunks sized from the device's largest buffer gives what it gives on the
/// whole clip (each frame is encoded alone), and a frame too large for one buffer is refused
/// before it runs, saying what to reduce.
#[test]
fn vae_encodes_and_decodes_in_frame_chunks_under_the_buffer_limit() {
    use tav_core::checkpoint::load_vae;
    use tav_core::limits::DeviceLimits;
    use tav_core::progress::Event;

    let device = device();
    let model = golden_dirs()[0].join("model");
    let vae = load_vae(&Folder(model), &LoadOptions::default(), &device)
        .unwrap()
        .0;
    let (frames, side) = (5, 64);
    let per_frame = vae
        .encoder_frame_elements(side, side)
        .max(vae.decoder_frame_elements(side, side))
        * 4;
    // A limit that holds two frames at a time.
    let limits = DeviceLimits::from_wgpu(u64::MAX, 2 * per_frame + 1);
    let pixels = Tensor::<4>::random(
        [frames, 3, side, side],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let mut steps = Vec::new();
    let chunked = vae
        .encode_frames(pixels.clone(), &limits, &mut |e: Event| steps.push(e.step))
        .unwrap();
    assert_eq!(steps, [2, 4, 5], "chunks of two frames");
    let whole = vae.encode(pixels).unwrap();
    let err = tav_tests::rel_error(
        &tav_tests::to_vec(chunked.mean.clone()),
        &tav_tests::to_vec(whole.mean),
    );
    assert!(err < 1e-5, "chunked encoding differs: {err:.2e}");
    let latents = tav_core::tune::clip_latents(chunked.mean, vae.scaling_factor);
    let mut decoded_steps = Vec::new();
    let video = tav_core::edit::decode_video(&vae, latents.clone(), &limits, &mut |e: Event| {
        decoded_steps.push(e.step)
    })
    .unwrap();
    assert_eq!(decoded_steps, [2, 4, 5]);
    let once =
        tav_core::edit::decode_video(&vae, latents, &DeviceLimits::UNLIMITED, &mut |_| {}).unwrap();
    let err = tav_tests::rel_error(&tav_tests::to_vec(video), &tav_tests::to_vec(once));
    assert!(err < 1e-5, "chunked decoding differs: {err:.2e}");
    let tiny = DeviceLimits::from_wgpu(u64::MAX, per_frame / 2);
    let refused = vae
        .frames_per_chunk(side, side, frames, 4, &tiny)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("reduce --width/--height"), "{refused}");
}

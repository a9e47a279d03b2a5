//! Streamed weights: a golden checkpoint packed for the web (`tav_core::pack`) and fed back
//! in odd-sized chunks, as a browser receives it, gives models that match the reference
//! within the f16 bound; the host never holds a whole component; a truncated or corrupt
//! shard is caught.

use std::collections::HashMap;

use burn::tensor::Tensor;
use tav_core::checkpoint::{Folder, MemoryFiles};
use tav_core::pack::{PackOptions, pack};
use tav_core::stream::{Manifest, ModelKind, ShardStream, StreamedWeights, build_models};
use tav_core::transformer::VideoAttentionOptions;
use tav_core::weights::SafetensorsFile;
use tav_tests::f16_bounds::{Depths, F16_UNIT_ROUNDOFF, f16_bound, roundings_per_layer};
use tav_tests::{Golden, device, golden_dirs, rel_error, to_vec};

const CHUNK: usize = 4099;

fn packed(dir: &std::path::Path, shard_bytes: u64) -> (Manifest, HashMap<String, Vec<u8>>) {
    let temporal = SafetensorsFile::open(&dir.join("temporal_init.safetensors")).unwrap();
    let mut files = HashMap::new();
    let options = PackOptions {
        name: "golden".into(),
        variant: None,
        shard_bytes,
        temporal: Some(&temporal),
    };
    let manifest = pack(&Folder(dir.join("model")), &options, &mut |path, bytes| {
        files.insert(path.to_string(), bytes.to_vec());
        Ok(())
    })
    .unwrap();
    let reparsed = Manifest::parse(std::str::from_utf8(&files["manifest.json"]).unwrap()).unwrap();
    assert_eq!(
        reparsed, manifest,
        "the written manifest is the one returned"
    );
    assert_eq!(
        manifest.kind,
        ModelKind::SdV1,
        "a diffusers folder without tav_pretrain.json is packed as Stable Diffusion"
    );
    (manifest, files)
}

fn stream_all(
    manifest: &Manifest,
    files: &HashMap<String, Vec<u8>>,
    weights: &mut StreamedWeights,
) {
    for shard in &manifest.shards {
        let mut stream = ShardStream::new(shard);
        for chunk in files[&shard.file].chunks(CHUNK) {
            stream.feed(chunk, weights).unwrap();
        }
        stream.finish().unwrap();
    }
}

#[test]
fn streamed_models_match_the_reference_within_the_f16_bound() {
    for dir in golden_dirs() {
        let golden = Golden::open(&dir);
        let device = device();
        // f16 weights, f32 arithmetic: one rounding per layer, over each component's depth.
        let depths = Depths::of_model(&dir.join("model"));
        let bound = |layers: usize| f16_bound(layers * roundings_per_layer(false));
        // Small shards, so components span several of them.
        let (manifest, files) = packed(&dir, 1 << 20);
        let component_bytes = |name: &str| -> u64 {
            manifest
                .shards
                .iter()
                .filter(|s| s.component == name)
                .map(|s| s.bytes)
                .sum()
        };
        let mut weights = StreamedWeights::new(&device);
        stream_all(&manifest, &files, &mut weights);
        let largest_tensor = manifest
            .shards
            .iter()
            .flat_map(|s| &s.tensors)
            .map(|t| t.bytes)
            .max()
            .unwrap();
        println!(
            "{}: {} shards, {} bytes; host peak while streaming {} bytes (largest tensor {largest_tensor}, unet {})",
            golden.name(),
            manifest.shards.len(),
            manifest.total_bytes(),
            weights.peak_host_bytes,
            component_bytes("unet"),
        );
        // One tensor at a time: never more than the largest tensor, never a whole UNet/VAE.
        assert!(
            weights.peak_host_bytes as u64 <= largest_tensor,
            "the host held {} bytes at once, more than the largest tensor ({largest_tensor})",
            weights.peak_host_bytes
        );
        assert!(
            (weights.peak_host_bytes as u64) < component_bytes("vae").max(component_bytes("unet"))
        );
        let mut tokenizer = MemoryFiles {
            name: "packed".into(),
            ..Default::default()
        };
        for f in &manifest.files {
            tokenizer
                .files
                .insert(f.path.clone(), files[&f.path].clone());
        }
        let models = build_models(&manifest, &mut weights, &tokenizer, 0).unwrap();

        let ids = golden.ints("text.input_ids");
        let reference = golden.host("text.hidden");
        let rows: Vec<Vec<u32>> = ids
            .chunks(reference.shape[1])
            .map(|r| r.iter().map(|&v| v as u32).collect())
            .collect();
        let hidden = models.text_encoder.forward(&rows, &device).unwrap();
        let e = rel_error(&to_vec(hidden), &reference.data);
        println!("  text.hidden (streamed f16) rel.err {e:.2e}");
        assert!(e < bound(depths.text_encoder));

        let latents: Tensor<4> = golden.tensor("vae.latents", &device);
        let decoded = models
            .vae
            .decode(latents.div_scalar(models.vae.scaling_factor));
        let e = rel_error(&to_vec(decoded), &golden.host("vae.decoded").data);
        println!("  vae.decoded (streamed f16) rel.err {e:.2e}");
        assert!(e < bound(depths.vae_decoder));

        for case in golden
            .keys()
            .iter()
            .filter(|k| k.starts_with("unet.init.") && k.ends_with(".out"))
        {
            let case = case.trim_end_matches(".out");
            let sample: Tensor<5> = golden.tensor(&format!("{case}.sample"), &device);
            let context: Tensor<3> =
                golden.tensor(&format!("{case}.encoder_hidden_states"), &device);
            let t = golden.ints(&format!("{case}.timestep"))[0] as f64;
            for kernels in [false, true] {
                let options = VideoAttentionOptions {
                    kernels,
                    ..VideoAttentionOptions::default()
                };
                let out = models
                    .unet
                    .forward(sample.clone(), &[t], context.clone(), options)
                    .unwrap();
                let e = rel_error(&to_vec(out), &golden.host(&format!("{case}.out")).data);
                println!("  {case} (streamed f16, kernels {kernels}) rel.err {e:.2e}");
                assert!(e < bound(depths.unet));
            }
        }
        let unet_report = models
            .report
            .iter()
            .find(|r| r.component == "unet")
            .unwrap();
        let original =
            SafetensorsFile::open(&dir.join("model/unet/diffusion_pytorch_model.safetensors"))
                .unwrap();
        assert_eq!(
            unet_report.fingerprint,
            tav_core::delta::fingerprint(&original),
            "tuned weights from the browser must load on the original folder"
        );
    }
}

#[test]
fn truncated_and_corrupt_shards_are_caught() {
    let dir = &golden_dirs()[0];
    let device = device();
    let (manifest, files) = packed(dir, 1 << 20);
    let shard = &manifest.shards[0];
    let bytes = &files[&shard.file];
    let mut weights = StreamedWeights::new(&device);

    let mut truncated = ShardStream::new(shard);
    truncated
        .feed(&bytes[..bytes.len() / 2], &mut weights)
        .unwrap();
    let e = truncated.finish().unwrap_err().to_string();
    println!("truncated: {e}");
    assert!(e.contains("incomplete") && e.contains(&shard.file), "{e}");

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x40;
    let mut corrupt = ShardStream::new(shard);
    corrupt.feed(&flipped, &mut weights).unwrap();
    let e = corrupt.finish().unwrap_err().to_string();
    println!("corrupt: {e}");
    assert!(e.contains("corrupt") && e.contains(&shard.file), "{e}");

    let mut too_long = ShardStream::new(shard);
    let mut longer = bytes.clone();
    longer.push(0);
    let e = too_long
        .feed(&longer, &mut weights)
        .unwrap_err()
        .to_string();
    println!("too long: {e}");
    assert!(e.contains("longer"), "{e}");

    let e = Manifest::parse("{\"format\": \"tav-web-0\"}")
        .unwrap_err()
        .to_string();
    println!("bad manifest: {e}");
    assert!(e.contains("manifest"), "{e}");
}

/// An edit made with f16 weights, against the f32 reference: each UNet pass is off by about
/// `√L·u/√3` (L layers in sequence, [`tav_tests::f16_bounds`]); guidance multiplies the
/// difference of two predictions, and so their errors, by its scale `g`; the passes of the
/// inversion and the edit add their errors in quadrature. So `g·√passes·√L·u/√3`, with no
/// margin: the two predictions share their rounded weights, so their errors partly cancel in
/// the difference and this is already an upper figure (tiny-a: 0.16 against 4.0e-2 measured).
fn f16_job_bound(depths: &Depths, guidance: f64, passes: usize) -> f64 {
    let pass = (depths.unet as f64).sqrt() * F16_UNIT_ROUNDOFF / 3f64.sqrt();
    guidance.max(1.0) * (passes as f64).sqrt() * pass
}

/// The golden job (tune with the golden draws, invert, edit) on the streamed f16 model, as the
/// browser runs it (kernels on); then, with `TAV_STREAM_F16_ARITHMETIC=1` on an adapter with
/// `shader-f16`, its inversion and edits again in f16 arithmetic (weights kept f16 on the GPU),
/// as the browser runs them there (tuning computes in f32 either way, so it runs once). Its f32-arithmetic edits are what the
/// browser test compares with: set `TAV_WEB_REFERENCE_OUT` to a folder to write them there
/// (`edit{i}.f32`, little-endian `[1, 3, F, H, W]`, and `golden.txt` naming the golden set).
#[test]
fn streamed_f16_model_runs_the_golden_job() {
    let out_dir = std::env::var_os("TAV_WEB_REFERENCE_OUT").map(std::path::PathBuf::from);
    golden_job(out_dir);
}

/// Tune with the golden draws, invert, edit; checks the losses and each edit against the
/// reference within [`f16_job_bound`], and writes the f32-arithmetic edits to `out_dir` when
/// given.
fn golden_job(out_dir: Option<std::path::PathBuf>) {
    use tav_core::edit::{Denoiser, decode_video};
    use tav_core::progress::silent;
    use tav_core::schedule::Ddim;
    use tav_core::tune::{StepDraws, TuneBatch, TuneSettings, Tuner, clip_latents};

    let dir = &golden_dirs()[0];
    let golden = Golden::open(dir);
    // The whole job on lavapipe took CI's machine over eight minutes; on burn's CPU backend it
    // takes seconds. The browser tests run this packed model's inversion and first edit with
    // the kernels against this run's tuned weights and edits (`TAV_GOLDEN_FULL=1` runs the
    // whole job with the kernels in tests/golden.rs); `TAV_STREAM_JOB_DEVICE=wgpu` runs it
    // here on wgpu with the kernels.
    let on_wgpu = std::env::var("TAV_STREAM_JOB_DEVICE").as_deref() == Ok("wgpu");
    let device = if on_wgpu {
        device()
    } else {
        burn::tensor::Device::flex()
    };
    println!(
        "streamed f16 job on {}",
        if on_wgpu {
            "wgpu, WGSL kernels"
        } else {
            "flex (burn's CPU backend), plain attention"
        }
    );
    let (manifest, files) = packed(dir, 64 << 20);
    let mut weights = StreamedWeights::new(&device);
    stream_all(&manifest, &files, &mut weights);
    let mut small = MemoryFiles::default();
    for f in &manifest.files {
        small.files.insert(f.path.clone(), files[&f.path].clone());
    }
    let models = build_models(&manifest, &mut weights, &small, 0).unwrap();
    let options = VideoAttentionOptions {
        kernels: on_wgpu,
        ..VideoAttentionOptions::default()
    };
    let json = &golden.json;
    let embed = |prompt: &str| {
        let ids = models.tokenizer.encode(prompt).unwrap();
        models.text_encoder.forward(&[ids], &device).unwrap()
    };
    let batch = TuneBatch {
        posterior: models
            .vae
            .encode(golden.tensor("e2e.train.pixels", &device))
            .unwrap(),
        context: embed(json["e2e.train.prompt"].as_str().unwrap()),
        scaling_factor: models.vae.scaling_factor,
        attention: options,
    };
    let mut tuner = Tuner::new(
        &models.unet,
        TuneSettings {
            learning_rate: json["e2e.train.lr"].as_f64().unwrap(),
            ..TuneSettings::default()
        },
    );
    let mut unet = tuner.train_mode(models.unet.clone());
    let mut losses = Vec::new();
    for step in 0..json["e2e.train.steps"].as_u64().unwrap() as usize {
        let draws = StepDraws {
            vae_eps: golden.tensor(&format!("e2e.train.step{step}.vae_eps"), &device),
            noise: golden.tensor(&format!("e2e.train.step{step}.noise"), &device),
            timestep: golden.ints(&format!("e2e.train.step{step}.timestep"))[0] as usize,
        };
        let (next, outcome) = tuner
            .step(unet, &batch, draws, &models.schedule, false)
            .unwrap();
        unet = next;
        losses.push(outcome.loss);
    }
    if let Some(out) = &out_dir {
        // The tuned weights, for the browser tests to import: the browser tunes fewer steps
        // (SwiftShader takes over a minute a step) and edits from these.
        let steps = losses.len();
        let pixels = golden.host("e2e.train.pixels").shape;
        let tuned = tav_core::delta::TunedWeights {
            meta: tav_core::delta::TuneMeta {
                base_fingerprint: models.base_fingerprint().to_string(),
                prompt: json["e2e.train.prompt"].as_str().unwrap().to_string(),
                video: "e2e.train.pixels".into(),
                frames: pixels[0],
                height: pixels[2],
                width: pixels[3],
                stride: 1,
                steps,
                steps_done: steps,
                learning_rate: json["e2e.train.lr"].as_f64().unwrap(),
                losses: losses.clone(),
                ..Default::default()
            },
            tensors: tuner.trainable_values(&unet),
            moments: Default::default(),
        };
        std::fs::create_dir_all(out).unwrap();
        std::fs::write(out.join("tuned.safetensors"), tuned.to_bytes().unwrap()).unwrap();
    }
    let unet = Tuner::eval_mode(unet);
    let e = rel_error(&losses, &golden.host("e2e.train.losses").data);
    // The loss comes through the UNet with f16 weights (tuning computes in f32).
    let depths = Depths::of_model(&dir.join("model"));
    let loss_bound = f16_bound(depths.unet * roundings_per_layer(false));
    println!("streamed f16 job: losses rel.err {e:.2e} (bound {loss_bound:.1e})");
    assert!(e < loss_bound);

    // The same inversion and edits in f16 arithmetic take CI's lavapipe minutes more; the
    // UNet's f16 arithmetic is held per call by `golden_f16_weights_within_bound` (1e-2), so
    // this job-level pass runs where asked (`TAV_STREAM_F16_ARITHMETIC=1`; measured here:
    // edits within 4.5e-2 of the reference against 4.0e-2 in f32 arithmetic).
    let mut arithmetic = vec![false];
    let asked = std::env::var("TAV_STREAM_F16_ARITHMETIC").as_deref() == Ok("1");
    if asked && tav_core::precision::supports_f16(&device) {
        arithmetic.push(true);
    } else if asked {
        println!("this adapter has no f16 support: f16 arithmetic is not checked here");
    }
    for f16_compute in arithmetic {
        let options = VideoAttentionOptions {
            f16_compute,
            ..options
        };
        let out_dir = out_dir.as_ref().filter(|_| !f16_compute);
        let uncond = embed("");
        let latents = clip_latents(batch.posterior.mean.clone(), models.vae.scaling_factor);
        let inv_steps = json["e2e.inv.steps"].as_u64().unwrap() as usize;
        let inversion = Ddim::new(&models.schedule, inv_steps).unwrap();
        let sampling = Ddim::new(
            &models.schedule,
            json["e2e.edit.steps"].as_u64().unwrap() as usize,
        )
        .unwrap();
        let denoiser = |ddim| Denoiser {
            unet: &unet,
            ddim,
            options,
        };
        let trajectory = denoiser(&inversion)
            .invert(latents, uncond.clone(), &mut silent)
            .unwrap();
        let prompts = json["e2e.edit.prompts"].as_array().unwrap();
        let guidance = json["e2e.edit.guidance_scale"].as_f64().unwrap();
        // One prediction a step (an edit step's two, with and without the prompt, are the
        // guided one, whose error the guidance factor counts).
        let passes = inv_steps + sampling.steps();
        let edit_bound = f16_job_bound(&depths, guidance, passes);
        for (i, prompt) in prompts.iter().enumerate() {
            let edited = denoiser(&sampling)
                .sample(
                    trajectory.last().unwrap().clone(),
                    embed(prompt.as_str().unwrap()),
                    uncond.clone(),
                    guidance,
                    &mut silent,
                )
                .unwrap();
            let video = to_vec(
                decode_video(
                    &models.vae,
                    edited,
                    &tav_core::limits::DeviceLimits::UNLIMITED,
                    &mut silent,
                )
                .unwrap(),
            );
            let e = rel_error(&video, &golden.host(&format!("e2e.edit{i}.video")).data);
            println!(
                "streamed f16 job (f16 arithmetic: {f16_compute}): edit {i} rel.err {e:.2e} (bound {edit_bound:.2e})"
            );
            assert!(e < edit_bound);
            if let Some(out) = out_dir {
                std::fs::create_dir_all(out).unwrap();
                let bytes: Vec<u8> = video.iter().flat_map(|v| v.to_le_bytes()).collect();
                std::fs::write(out.join(format!("edit{i}.f32")), bytes).unwrap();
                // Which golden set these edits are of, for the browser tests to check.
                let set = dir.canonicalize().unwrap_or_else(|_| dir.clone());
                std::fs::write(out.join("golden.txt"), set.display().to_string()).unwrap();
            }
        }
    }
}

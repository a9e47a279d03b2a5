//! Parity with the reference implementation on every golden set (`TAV_GOLDEN_DIRS`, or
//! every directory under `../shared/golden/`), on the wgpu device.
//!
//! Every case is run and its relative error printed; a case that fails its tolerance, or a
//! golden tensor no case can run, fails the test. `train.*` and `e2e.*` belong to the tuning
//! issue: they are listed as not yet covered and not counted as passes.

use std::collections::BTreeSet;

use burn::tensor::{Device, Tensor};
use tav_core::checkpoint::{Folder, LoadOptions, Models, load_unet};
use tav_core::transformer::VideoAttentionOptions;
use tav_core::weights::SafetensorsFile;
use tav_tests::{Golden, device, golden_dirs, rel_error, to_vec};

const TOL: f64 = 1e-4;

/// Runs cases and keeps the score.
struct Run {
    passed: Vec<String>,
    failed: Vec<String>,
    covered: BTreeSet<String>,
}

impl Run {
    fn check(&mut self, case: &str, out: &[f32], reference: &[f32], tol: f64) {
        let err = if out.len() == reference.len() {
            rel_error(out, reference)
        } else {
            f64::INFINITY
        };
        let ok = err <= tol;
        println!(
            "  {:<8} {case:<40} rel.err {err:.3e} (tol {tol:.0e})",
            if ok { "ok" } else { "FAIL" }
        );
        if ok {
            self.passed.push(case.to_string());
        } else {
            self.failed
                .push(format!("{case}: rel.err {err:.3e} > {tol:.0e}"));
        }
    }

    fn cover(&mut self, keys: &[&str]) {
        self.covered.extend(keys.iter().map(|k| k.to_string()));
    }
}

#[test]
fn golden_parity() {
    let dirs = golden_dirs();
    assert!(!dirs.is_empty(), "no golden directories found");
    let device = device();
    let mut failures = Vec::new();
    for dir in dirs {
        let golden = Golden::open(&dir);
        println!("golden set {} ({})", golden.name(), dir.display());
        let mut run = Run {
            passed: Vec::new(),
            failed: Vec::new(),
            covered: BTreeSet::new(),
        };
        run_set(&golden, &device, &mut run);
        let uncovered: Vec<String> = golden
            .keys()
            .into_iter()
            .filter(|k| !run.covered.contains(k))
            .collect();
        let later: Vec<&String> = uncovered
            .iter()
            .filter(|k| k.starts_with("train.") || k.starts_with("e2e."))
            .collect();
        let unknown: Vec<&String> = uncovered
            .iter()
            .filter(|k| !(k.starts_with("train.") || k.starts_with("e2e.")))
            .collect();
        println!(
            "  not yet covered (tuning issue): {} train.*/e2e.* tensors, not counted as passes",
            later.len()
        );
        for key in &unknown {
            run.failed
                .push(format!("no case can run golden tensor `{key}`"));
        }
        println!(
            "  {}: {} passed, {} failed",
            golden.name(),
            run.passed.len(),
            run.failed.len()
        );
        failures.extend(run.failed.iter().map(|f| format!("{}: {f}", golden.name())));
    }
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
}

fn run_set(golden: &Golden, device: &Device, run: &mut Run) {
    let folder = Folder(golden.dir.join("model"));
    let init = SafetensorsFile::open(&golden.dir.join("temporal_init.safetensors")).unwrap();
    let models = Models::load(&folder, Some(&init), &LoadOptions::default(), device)
        .unwrap_or_else(|e| panic!("loading {}: {e}", golden.dir.display()));
    for r in &models.report {
        assert!(
            r.unexpected.is_empty(),
            "{}: unexpected tensors {:?}",
            r.file,
            r.unexpected
        );
    }
    tokenizer_cases(golden, &models, run);
    text_cases(golden, &models, device, run);
    vae_cases(golden, &models, device, run);
    unet_cases(golden, &models, &folder, device, run);
    schedule_cases(golden, &models, device, run);
}

fn tokenizer_cases(golden: &Golden, models: &Models, run: &mut Run) {
    let spec = &golden.json["tokenizer"];
    let prompts = spec["prompts"].as_array().expect("tokenizer.prompts");
    let expected = spec["input_ids"].as_array().expect("tokenizer.input_ids");
    let mut exact = 0;
    for (prompt, ids) in prompts.iter().zip(expected) {
        let prompt = prompt.as_str().unwrap();
        let ids: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ours = models.tokenizer.encode(prompt).unwrap();
        if ours == ids {
            exact += 1;
        } else {
            run.failed.push(format!(
                "tokenizer: {prompt:?}: got {ours:?}, expected {ids:?}"
            ));
        }
    }
    println!(
        "  {:<8} tokenizer: {exact}/{} prompts exact",
        if exact == prompts.len() { "ok" } else { "FAIL" },
        prompts.len()
    );
    if exact == prompts.len() {
        run.passed.push("tokenizer".into());
    }
}

fn text_cases(golden: &Golden, models: &Models, device: &Device, run: &mut Run) {
    let ids = golden.ints("text.input_ids");
    let reference = golden.host("text.hidden");
    let len = reference.shape[1];
    let rows: Vec<Vec<u32>> = ids
        .chunks(len)
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect();
    let hidden = models.text_encoder.forward(&rows, device).unwrap();
    run.check("text.hidden", &to_vec(hidden), &reference.data, TOL);
    run.cover(&["text.input_ids", "text.hidden"]);
}

fn vae_cases(golden: &Golden, models: &Models, device: &Device, run: &mut Run) {
    let pixels: Tensor<4> = golden.tensor("vae.pixels", device);
    let posterior = models.vae.encode(pixels).unwrap();
    run.check(
        "vae.mean",
        &to_vec(posterior.mean),
        &golden.host("vae.mean").data,
        TOL,
    );
    run.check(
        "vae.logvar",
        &to_vec(posterior.logvar),
        &golden.host("vae.logvar").data,
        TOL,
    );
    let latents: Tensor<4> = golden.tensor("vae.latents", device);
    let decoded = models
        .vae
        .decode(latents.div_scalar(models.vae.scaling_factor));
    run.check(
        "vae.decoded",
        &to_vec(decoded),
        &golden.host("vae.decoded").data,
        TOL,
    );
    run.cover(&[
        "vae.pixels",
        "vae.mean",
        "vae.logvar",
        "vae.latents",
        "vae.decoded",
    ]);
}

fn unet_cases(golden: &Golden, models: &Models, folder: &Folder, device: &Device, run: &mut Run) {
    let outs: Vec<String> = golden
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("unet.") && k.ends_with(".out"))
        .collect();
    let variants: BTreeSet<String> = outs
        .iter()
        .map(|k| k.split('.').nth(1).unwrap().to_string())
        .collect();
    for variant in variants {
        let temporal_path = golden.dir.join(format!("temporal_{variant}.safetensors"));
        let temporal = SafetensorsFile::open(&temporal_path).unwrap_or_else(|e| panic!("{e}"));
        let reloaded;
        let unet = if variant == "init" {
            &models.unet
        } else {
            reloaded = load_unet(folder, Some(&temporal), &LoadOptions::default(), device)
                .unwrap()
                .0;
            &reloaded
        };
        for out_key in outs
            .iter()
            .filter(|k| k.split('.').nth(1) == Some(variant.as_str()))
        {
            let case = out_key.trim_end_matches(".out");
            let sample: Tensor<5> = golden.tensor(&format!("{case}.sample"), device);
            let context: Tensor<3> =
                golden.tensor(&format!("{case}.encoder_hidden_states"), device);
            let t = golden.ints(&format!("{case}.timestep"))[0] as f64;
            let out = unet
                .forward(sample, &[t], context, VideoAttentionOptions::default())
                .unwrap();
            run.check(case, &to_vec(out), &golden.host(out_key).data, TOL);
            run.cover(&[
                &format!("{case}.sample"),
                &format!("{case}.encoder_hidden_states"),
                &format!("{case}.timestep"),
                out_key,
            ]);
        }
    }
}

fn schedule_cases(golden: &Golden, models: &Models, device: &Device, run: &mut Run) {
    let schedule = &models.schedule;
    run.check(
        "sched.alphas_cumprod",
        &schedule.alphas_cumprod,
        &golden.host("sched.alphas_cumprod").data,
        TOL,
    );
    run.cover(&["sched.alphas_cumprod"]);

    let table = golden.json["ddim_timesteps"]
        .as_object()
        .expect("ddim_timesteps");
    let mut exact = 0;
    for (steps, expected) in table {
        let steps: usize = steps.parse().unwrap();
        let expected: Vec<usize> = expected
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        match schedule.ddim_timesteps(steps) {
            Ok(ours) if ours == expected => exact += 1,
            other => run
                .failed
                .push(format!("ddim_timesteps({steps}): got {other:?}")),
        }
    }
    println!(
        "  {:<8} ddim_timesteps: {exact}/{} step counts exact",
        if exact == table.len() { "ok" } else { "FAIL" },
        table.len()
    );
    if exact == table.len() {
        run.passed.push("ddim_timesteps".into());
    }

    let steps = ddim_case_steps(golden);
    let x: Tensor<5> = golden.tensor("ddim.x", device);
    let eps: Tensor<5> = golden.tensor("ddim.eps", device);
    let t = golden.ints("ddim.t")[0] as usize;
    let prev = schedule.ddim_step(eps, t, x, steps);
    run.check(
        "ddim.prev",
        &to_vec(prev),
        &golden.host("ddim.prev").data,
        TOL,
    );
    run.cover(&["ddim.x", "ddim.eps", "ddim.t", "ddim.prev"]);
}

/// The number of inference steps of the `ddim.*` case, from its description
/// ("timestep, with N inference steps").
fn ddim_case_steps(golden: &Golden) -> usize {
    let description = golden.json["tensors"]["ddim.t"].as_str().unwrap_or("");
    description
        .split_whitespace()
        .zip(description.split_whitespace().skip(1))
        .find(|(_, next)| next.starts_with("inference"))
        .and_then(|(n, _)| n.parse().ok())
        .expect("ddim.t's description names its inference step count")
}

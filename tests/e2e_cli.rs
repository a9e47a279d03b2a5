//! The `tav` binary end to end, on the tiny golden checkpoint and the reference's
//! `car-turn.mp4`, at a small size and a few steps: outputs, resume after a kill, and the
//! error for every bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn tav() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tav"));
    cmd.env("XDG_CACHE_HOME", scratch("cache"));
    cmd
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tiny_model() -> PathBuf {
    repo().join("../shared/golden/tiny-a/model")
}

fn car_turn() -> PathBuf {
    repo().join("../shared/videos/car-turn.mp4")
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tav-e2e-{name}-{}", std::process::id()))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("tav runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Small-size flags shared by the runs below.
fn small(cmd: &mut Command) -> &mut Command {
    cmd.args([
        "--frames", "4", "--stride", "8", "--width", "64", "--height", "64",
    ])
}

/// Decodes a GIF into (width, height, RGBA frames).
fn gif_frames(path: &Path) -> (u16, u16, Vec<Vec<u8>>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options.read_info(file).unwrap();
    let (w, h) = (decoder.width(), decoder.height());
    let mut frames = Vec::new();
    while let Some(frame) = decoder.read_next_frame().unwrap() {
        frames.push(frame.buffer.to_vec());
    }
    (w, h, frames)
}

fn variance(pixels: &[u8]) -> f64 {
    let mean = pixels.iter().map(|&p| p as f64).sum::<f64>() / pixels.len() as f64;
    pixels
        .iter()
        .map(|&p| (p as f64 - mean).powi(2))
        .sum::<f64>()
        / pixels.len() as f64
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn run_job_on_car_turn_writes_edited_videos() {
    let out = scratch("run");
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let result = run(small(
        tav()
            .arg("run")
            .arg(repo().join("jobs/car-turn.toml"))
            .arg("--model")
            .arg(tiny_model())
            .arg("--video")
            .arg(car_turn())
            .arg("--out")
            .arg(&out)
            .args([
                "--steps",
                "2",
                "--inversion-steps",
                "2",
                "--inference-steps",
                "2",
                "--png",
                "--quiet",
            ]),
    ));
    println!("tav run took {:.0} s", started.elapsed().as_secs_f64());
    assert!(
        result.status.success(),
        "tav run failed: {}",
        stderr(&result)
    );
    for name in [
        "tuned.safetensors",
        "checkpoint.safetensors",
        "loss.png",
        "log.jsonl",
        "grid.gif",
        "grid.mp4",
    ] {
        assert!(out.join(name).is_file(), "{name} written");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "no partial files left");

    // The source frames as the job saw them: the first edit's PNG folder has one file per frame.
    let edits: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gif") && !p.ends_with("grid.gif"))
        .collect();
    assert_eq!(
        edits.len(),
        4,
        "one GIF per edit prompt of the job: {edits:?}"
    );
    let (gw, gh, grid) = gif_frames(&out.join("grid.gif"));
    assert_eq!(grid.len(), 4);
    assert!(
        gw as usize >= 64 * 5 && gh as usize >= 64,
        "grid holds source + 4 edits: {gw}x{gh}"
    );
    for edit in &edits {
        let (w, h, frames) = gif_frames(edit);
        assert_eq!((w, h), (64, 64), "{}", edit.display());
        assert_eq!(frames.len(), 4, "{}", edit.display());
        assert!(
            variance(&frames[0]) > 1.0,
            "{} is not blank",
            edit.display()
        );
        let mp4 = edit.with_extension("mp4");
        assert!(
            std::fs::metadata(&mp4).unwrap().len() > 100,
            "{} written",
            mp4.display()
        );
        let png_dir = PathBuf::from(format!("{}-frames", edit.with_extension("").display()));
        assert_eq!(
            std::fs::read_dir(&png_dir).unwrap().count(),
            4,
            "PNG frames in {}",
            png_dir.display()
        );
    }
    // The grid's first column is the source: the edits differ from it.
    let (_, _, first_edit) = gif_frames(&edits[0]);
    let source_row: Vec<u8> = {
        let row_bytes = gw as usize * 4;
        grid[0]
            .chunks(row_bytes)
            .take(64)
            .flat_map(|r| r[..64 * 4].to_vec())
            .collect()
    };
    assert!(
        mean_abs_diff(&source_row, &first_edit[0]) > 2.0,
        "the edit is not the input"
    );
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert!(log.contains("\"adapter\""), "the adapter is logged");
    assert!(
        log.contains("\"phase\":\"tune\""),
        "tuning progress is logged"
    );
}

fn tune_cmd(out: &Path, steps: &str) -> Command {
    let mut cmd = tav();
    cmd.arg("tune")
        .arg("--model")
        .arg(tiny_model())
        .arg("--video")
        .arg(car_turn())
        .arg("--out")
        .arg(out)
        .args([
            "--prompt",
            "a jeep car is moving on the road",
            "--steps",
            steps,
            "--checkpoint-every",
            "1",
            // The CLI's resume logic, not the GPU path, is under test: burn's CPU backend
            // runs it in a fraction of lavapipe's time.
            "--device",
            "flex",
        ]);
    small(&mut cmd);
    cmd
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec()))
        .collect();
    all.sort();
    all
}

#[test]
fn killed_tuning_resumes_with_nothing_lost() {
    let whole = scratch("whole");
    let resumed = scratch("resumed");
    let _ = std::fs::remove_dir_all(&whole);
    let _ = std::fs::remove_dir_all(&resumed);
    assert!(run(&mut tune_cmd(&whole, "4")).status.success());

    let mut child = tune_cmd(&resumed, "4").spawn().unwrap();
    let checkpoint = resumed.join("checkpoint.safetensors");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !checkpoint.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        checkpoint.exists(),
        "a checkpoint was written before the kill"
    );

    let again = run(tune_cmd(&resumed, "4").arg("--json"));
    assert!(again.status.success(), "{}", stderr(&again));
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains("resuming from"),
        "the second run resumes: {said}"
    );
    assert_eq!(
        tensors(&whole.join("tuned.safetensors")),
        tensors(&resumed.join("tuned.safetensors")),
        "resumed tuning ends with the same weights as an uninterrupted run"
    );
}

fn expect_error(cmd: &mut Command, needle: &str) {
    let out = run(cmd);
    assert!(!out.status.success(), "should fail with {needle:?}");
    let message = stderr(&out);
    assert!(
        message.contains(needle),
        "error mentions {needle:?}: {message}"
    );
    assert!(!message.contains("panicked"), "no panic: {message}");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let out = scratch("bad");
    let _ = std::fs::remove_dir_all(&out);
    let tune = |extra: &[&str]| {
        let mut cmd = tav();
        cmd.arg("tune")
            .arg("--model")
            .arg(tiny_model())
            .arg("--out")
            .arg(&out)
            .args(["--prompt", "x", "--steps", "1", "--quiet"])
            .args(extra);
        cmd
    };
    let car = car_turn().display().to_string();
    // Size not a multiple of 64.
    expect_error(
        &mut tune(&["--video", &car, "--width", "100", "--height", "64"]),
        "not a positive multiple of 64",
    );
    // Too short: 80 frames, asking for 50 at stride 2.
    expect_error(
        &mut tune(&[
            "--video", &car, "--frames", "50", "--stride", "2", "--width", "64", "--height", "64",
        ]),
        "80",
    );
    // Unreadable video.
    std::fs::create_dir_all(&out).unwrap();
    let junk = out.join("junk.mp4");
    std::fs::write(&junk, b"this is not a video at all").unwrap();
    expect_error(
        &mut tune(&[
            "--video",
            junk.to_str().unwrap(),
            "--width",
            "64",
            "--height",
            "64",
        ]),
        "junk.mp4",
    );
    // Missing video.
    expect_error(
        &mut tune(&[
            "--video",
            "/nonexistent/clip.mp4",
            "--width",
            "64",
            "--height",
            "64",
        ]),
        "/nonexistent/clip.mp4",
    );
    // Missing model folder.
    let mut cmd = tav();
    cmd.args(["check", "--model", "/nonexistent/model", "--quiet"]);
    expect_error(&mut cmd, "/nonexistent/model");
    // A folder that is not a diffusers checkpoint.
    let mut cmd = tav();
    cmd.args(["check", "--quiet", "--model"]).arg(&out);
    expect_error(&mut cmd, "model_index.json");
    // No such adapter.
    let mut cmd = tav();
    cmd.args(["check", "--device", "discrete:7", "--model"])
        .arg(tiny_model());
    expect_error(&mut cmd, "no usable GPU adapter");
    // The WGSL kernels need a wgpu adapter, which burn's CPU backend is not.
    let mut cmd = tav();
    cmd.args(["check", "--kernels", "--device", "flex", "--model"])
        .arg(tiny_model());
    expect_error(&mut cmd, "need a wgpu adapter");
    // One frame the VAE cannot hold in a buffer (its attention at 1536² needs 5.1 GiB, over
    // the adapter's largest binding) is refused before it runs, saying what to reduce.
    let mut cmd = tav();
    cmd.args(["check", "--size", "1536", "--frames", "2", "--model"])
        .arg(tiny_model());
    expect_error(
        &mut cmd,
        "allows at most 128.0 MiB in one buffer: reduce --width/--height",
    );
    // The memory plan refuses a job with a tensor over the adapter's largest buffer (the up
    // blocks' concatenation of 24 frames at 1024²) before anything is read or allocated.
    expect_error(
        &mut tune(&[
            "--video", &car, "--frames", "24", "--width", "1024", "--height", "1024",
        ]),
        "the tuning step needs a 144.0 MiB buffer",
    );
    expect_error(
        &mut tune(&[
            "--video", &car, "--frames", "24", "--width", "1024", "--height", "1024",
        ]),
        "try fewer --frames (now 24), a smaller --width/--height (now 1024×1024), --f16",
    );
    // ... and, where the device's memory is known (the host's, on burn's CPU backend), a
    // job planned past it.
    expect_error(
        &mut tune(&[
            "--video", &car, "--device", "flex", "--frames", "24", "--width", "4096", "--height",
            "4096",
        ]),
        "the tuning step is planned at",
    );
    // On burn's CPU backend a failed allocation would abort the process: the size is
    // refused before anything is allocated, with what it needs.
    let mut cmd = tav();
    cmd.args([
        "check", "--device", "flex", "--size", "1536", "--frames", "2", "--model",
    ])
    .arg(tiny_model());
    expect_error(&mut cmd, "reduce --frames or --width/--height");
    // A NaN loss stops tuning and keeps the last good checkpoint.
    let nan_out = scratch("nan");
    let _ = std::fs::remove_dir_all(&nan_out);
    let mut cmd = tav();
    cmd.arg("tune")
        .arg("--model")
        .arg(tiny_model())
        .arg("--video")
        .arg(&car)
        .arg("--out")
        .arg(&nan_out);
    cmd.args([
        "--prompt",
        "x",
        "--steps",
        "3",
        "--checkpoint-every",
        "1",
        "--lr",
        "1e30",
    ]);
    small(&mut cmd);
    expect_error(&mut cmd, "last good checkpoint");
    assert!(
        nan_out.join("checkpoint.safetensors").exists(),
        "the good checkpoint is kept"
    );
    assert!(
        !nan_out.join("tuned.safetensors").exists(),
        "no tuned weights from a failed run"
    );
}

#[test]
fn edit_refuses_weights_of_another_base_model() {
    let out = scratch("other-base");
    let _ = std::fs::remove_dir_all(&out);
    // Tune on the built-in demo model ...
    let mut cmd = tav();
    cmd.args([
        "tune", "--model", "demo", "--video", "demo", "--prompt", "a ball", "--steps", "1",
        "--device", "flex", "--out",
    ])
    .arg(&out);
    cmd.args([
        "--frames", "2", "--stride", "1", "--width", "64", "--height", "64", "--quiet",
    ]);
    assert!(run(&mut cmd).status.success());
    // ... then edit with the golden model: refused.
    let mut cmd = tav();
    cmd.arg("edit")
        .arg("--model")
        .arg(tiny_model())
        .arg("--tuned")
        .arg(out.join("tuned.safetensors"));
    cmd.args(["--prompt", "a blue ball", "--quiet"]);
    expect_error(&mut cmd, "tuned on another base model");
    // A file that is not tuned weights at all.
    let mut cmd = tav();
    cmd.arg("edit")
        .arg("--model")
        .arg(tiny_model())
        .arg("--tuned")
        .arg(tiny_model().join("vae/diffusion_pytorch_model.safetensors"));
    cmd.args(["--prompt", "x", "--quiet"]);
    expect_error(&mut cmd, "not a tav tuned-weights file");
}

/// `tav bench --kernel attention`: forward and backward of both attentions timed alone, with
/// FLOPs counted from the shape; a head size over the kernels' is refused.
#[test]
fn bench_times_the_attention_kernels_alone_with_their_flops() {
    let out = run(tav().args([
        "bench",
        "--kernel",
        "attention",
        "--tokens",
        "24",
        "--frames",
        "3",
        "--heads",
        "2",
        "--head-dim",
        "8",
        "--runs",
        "1",
    ]));
    assert!(out.status.success(), "bench runs: {}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    let passes: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["bench"].as_str().unwrap(), l["mode"].as_str().unwrap()))
        .collect();
    assert_eq!(
        passes,
        [
            ("attention.forward", "sparse-causal"),
            ("attention.backward", "sparse-causal"),
            ("attention.forward", "temporal"),
            ("attention.backward", "temporal"),
        ]
    );
    // Sparse-causal: 3 frames × 2 heads × 24 queries, each against 48 keys, 4·8 FLOPs each;
    // backward 2.5× that.
    assert_eq!(
        lines[0]["flop"].as_f64().unwrap(),
        (3 * 2 * 24 * 48 * 32) as f64
    );
    assert_eq!(
        lines[1]["flop"].as_f64().unwrap(),
        2.5 * (3 * 2 * 24 * 48 * 32) as f64
    );
    assert_eq!(lines[2]["keys"], 3);
    for line in &lines {
        assert!(line["flop_per_s"].as_f64().unwrap() > 0.0, "{line}");
    }
    let refused = run(tav().args(["bench", "--kernel", "attention", "--head-dim", "300"]));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--head-dim 300"),
        "{}",
        stderr(&refused)
    );
}

/// `tav bench` at the tiny config: one JSON line per step, each with a positive median time
/// and a peak above what the weights alone hold, the plan within ±15% of it, with and
/// without block-level recompute; a bad size is refused.
#[test]
fn bench_reports_time_and_memory_per_step() {
    let out = run(tav().args([
        "bench",
        "--config",
        "tiny",
        "--frames",
        "2",
        "--runs",
        "1",
        "--kernels",
        "on",
    ]));
    assert!(out.status.success(), "bench runs: {}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    let setup = &lines[0];
    assert_eq!(setup["bench"], "setup");
    let weight_bytes = setup["parameters"].as_u64().unwrap() * 4;
    let steps: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l["bench"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["forward", "tune", "sample"]);
    let forward_flop = lines[1]["flop"].as_f64().expect("FLOPs counted");
    for line in &lines[1..] {
        assert!(line["median_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert_eq!(line["runs"], 1);
        // FLOPs from the shapes (a guided step is two forwards), and their rate.
        let flop = line["flop"].as_f64().unwrap();
        assert!(flop >= forward_flop && forward_flop > 0.0, "{line}");
        let rate = line["flop_per_s"].as_f64().unwrap();
        let expected = flop / (line["median_ms"].as_f64().unwrap() / 1e3);
        assert!((rate - expected).abs() <= 1e-6 * expected, "{line}");
        let peak = line["peak_bytes"].as_u64().expect("peak memory reported");
        assert!(
            peak > weight_bytes,
            "peak {peak} below the weights {weight_bytes}: {line}"
        );
        // `tav plan`'s prediction of the same step holds within ±15% of what was measured.
        let ratio = line["plan_ratio"]
            .as_f64()
            .expect("the plan's ratio is reported");
        assert!(
            (0.85..=1.15).contains(&ratio),
            "planned / measured peak {ratio:.3}: {line}"
        );
    }
    // Block-level recompute, each in its own process (a clean memory pool): the tuning step
    // at 3 frames of 128² reserves under 60% of what keeping every activation does
    // (measured on lavapipe: 63.0 MB → 31.5 MB), and the plan holds within ±15% both ways.
    let tune_peak = |recompute: &str| {
        let out = run(tav().args([
            "bench",
            "--config",
            "tiny",
            "--frames",
            "3",
            "--size",
            "128",
            "--runs",
            "1",
            "--steps",
            "tune",
            "--recompute",
            recompute,
        ]));
        assert!(out.status.success(), "bench runs: {}", stderr(&out));
        let line: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap();
        let ratio = line["plan_ratio"].as_f64().unwrap();
        assert!(
            (0.85..=1.15).contains(&ratio),
            "--recompute {recompute}: planned / measured peak {ratio:.3}: {line}"
        );
        line["peak_bytes"].as_u64().unwrap()
    };
    let (kept, recomputed) = (tune_peak("off"), tune_peak("on"));
    assert!(
        recomputed * 10 < kept * 6,
        "recompute's tuning peak {recomputed} B against {kept} B keeping everything"
    );
    expect_error(
        tav().args(["bench", "--config", "tiny", "--size", "100"]),
        "'--size <SIZE>': 100 is not a positive multiple of 64",
    );
    expect_error(
        tav().args(["bench", "--config", "sd99"]),
        "invalid value 'sd99' for '--config",
    );
}

/// `tav toy-clip` writes the clip it captions: decoded from its GIF, the pixels are read back
/// (colour, shape, background, the object's path) as the generator drew them.
#[test]
fn toy_clip_writes_the_clip_it_captions() {
    use tav_core::score::{analyse, motion_kept};
    use tav_core::toyworld::{Background, ClipSpec, Colour, Path as Motion, Shape, render};

    let out = scratch("toy").join("clip.gif");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let written = run(tav().arg("toy-clip").arg(&out).args([
        "--seed",
        "9",
        "--frames",
        "6",
        "--size",
        "64",
        "--colour",
        "blue",
        "--shape",
        "square",
        "--background",
        "grass",
        "--path",
        "bounce",
    ]));
    assert!(written.status.success());
    let caption = String::from_utf8_lossy(&written.stdout).trim().to_string();
    assert_eq!(caption, "a blue square is moving on the grass");

    let (w, h, rgba) = gif_frames(&out);
    assert_eq!((w, h, rgba.len()), (64, 64, 6));
    let frames: Vec<Vec<u8>> = rgba
        .iter()
        .map(|f| f.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect())
        .collect();
    let seen = analyse(&frames, 64);
    assert_eq!(seen.colour, Some(Colour::Blue));
    assert_eq!(seen.shape, Some(Shape::Square));
    assert_eq!(seen.background, Background::Grass);
    let drawn = render(&ClipSpec {
        shape: Shape::Square,
        colour: Colour::Blue,
        background: Background::Grass,
        path: Motion::Bounce,
        frames: 6,
        size: 64,
        seed: 9,
        pan: 0.0,
    });
    let kept = motion_kept(&analyse(&drawn.frames, 64), &seen, 64);
    println!("toy clip through GIF: {kept:?}");
    assert!(
        kept.mean_iou > 0.9 && kept.centroid_error < 0.02,
        "{kept:?}"
    );

    expect_error(
        tav().arg("toy-clip").arg(&out).args(["--colour", "green"]),
        "invalid value 'green' for '--colour",
    );
    expect_error(
        tav().arg("toy-clip").arg(&out).args(["--size", "100"]),
        "multiple of 64",
    );
}

/// `tav score` at its smallest (one clip, one step of everything) on the tiny checkpoint: every
/// method makes and scores the clip's three edits, the table and score.json say so, and bad
/// arguments get clear errors. (Only the pipeline is checked here: the tiny checkpoint's
/// edits are noise, so no success rate is asserted.)
#[test]
fn score_edits_and_scores_every_method() {
    const METHODS: [&str; 5] = [
        "full",
        "no-tuning",
        "no-temporal",
        "per-frame-attention",
        "text-to-video",
    ];
    let out = scratch("score");
    let scored = run(tav().arg("score").arg("--model").arg(tiny_model()).args([
        "--device",
        "flex",
        "--clips",
        "1",
        "--frames",
        "2",
        "--tune-steps",
        "1",
        "--inversion-steps",
        "1",
        "--steps",
        "1",
        "--pan",
        "0.25",
        "--methods",
        &METHODS.join(","),
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(scored.status.success(), "{}", stderr(&scored));
    let table = String::from_utf8_lossy(&scored.stdout);
    for method in METHODS {
        assert!(
            table.lines().any(|l| l.starts_with(method)),
            "a row for {method}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("score.json")).unwrap()).unwrap();
    let edits = json["edits"].as_array().unwrap();
    assert_eq!(edits.len(), METHODS.len() * 3, "three edits per method");
    for e in edits {
        let iou = e["mean_iou"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&iou), "{e}");
        assert!(e["frame_change"].as_f64().unwrap() >= 0.0, "{e}");
        let drift = e["colour_drift"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&drift), "{e}");
        let background = e["background_change"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&background), "{e}");
        // The source's background slides 16 whole pixels between its two frames: with the
        // pan undone, it does not change.
        let source_background = e["source_background_change"].as_f64().unwrap();
        assert!(source_background < 0.01, "{e}");
        assert!(
            e["seen"].as_str().unwrap().contains(" on the "),
            "what the edit shows: {e}"
        );
        assert_ne!(
            e["prompt"], e["source"],
            "each edit asks for something new: {e}"
        );
    }
    let kinds: std::collections::BTreeSet<&str> =
        edits.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 3, "colour, background and shape edits");
    assert_eq!(json["settings"]["pan"], 0.25);
    assert_eq!(json["summary"].as_array().unwrap().len(), METHODS.len());
    // Every scored edit can be looked at: per clip and method, the source beside its edits.
    for method in METHODS {
        let (w, h, frames) = gif_frames(&out.join(format!("videos/1000-{method}.gif")));
        assert_eq!(frames.len(), 2, "{method}: the clip's frames");
        assert!(
            w >= 4 * 64 && h >= 64,
            "{method}: source and three edits side by side"
        );
    }

    expect_error(
        tav()
            .arg("score")
            .arg("--model")
            .arg(tiny_model())
            .args(["--methods", "full,magic"]),
        "invalid value 'magic' for '--methods",
    );
    expect_error(
        tav()
            .arg("score")
            .arg("--model")
            .arg(tiny_model())
            .args(["--size", "96"]),
        "multiple of 64",
    );
    expect_error(
        tav()
            .arg("score")
            .arg("--model")
            .arg(tiny_model())
            .args(["--pan", "nan"]),
        "--pan NaN is not a finite share",
    );
}

/// `tav sample` draws one video per prompt from the same seeded noise: the prompts, not
/// the noise, make them differ, and the same seed draws the same video again.
#[test]
fn sample_draws_a_video_per_prompt() {
    let out = scratch("sample");
    let sample = |out: &Path, prompts: &[&str]| {
        let mut cmd = tav();
        cmd.arg("sample").arg("--model").arg(tiny_model()).args([
            "--device",
            "flex",
            "--frames",
            "2",
            "--size",
            "64",
            "--steps",
            "2",
            "--guidance",
            "3",
            "--quiet",
        ]);
        for p in prompts {
            cmd.args(["--prompt", p]);
        }
        run(cmd.arg("--out").arg(out))
    };
    let done = sample(&out, &["a red car", "a man is skiing"]);
    assert!(done.status.success(), "{}", stderr(&done));
    let (w, h, car) = gif_frames(&out.join("01-a-red-car.gif"));
    assert_eq!((w, h, car.len()), (64, 64, 2));
    let (_, _, skiing) = gif_frames(&out.join("02-a-man-is-skiing.gif"));
    assert!(
        mean_abs_diff(&car[0], &skiing[0]) > 0.0,
        "different prompts, same noise: the videos differ"
    );
    let (gw, _, grid) = gif_frames(&out.join("grid.gif"));
    assert!(gw >= 2 * 64 && grid.len() == 2, "both prompts side by side");

    let again = scratch("sample-again");
    assert!(sample(&again, &["a red car"]).status.success());
    let (_, _, repeat) = gif_frames(&again.join("01-a-red-car.gif"));
    assert!(
        mean_abs_diff(&repeat[0], &car[0]) < 1.0,
        "the seed reproduces the video"
    );

    expect_error(
        tav()
            .arg("sample")
            .arg("--model")
            .arg(tiny_model())
            .args(["--size", "96", "--prompt", "a car"]),
        "multiple of 64",
    );
}

/// The committed toy model edits for real: a reduced `tav score` (2 held-out clips, six
/// edits, few steps, on burn's CPU backend, `tav score`'s default guidance) must change the
/// asked-for attribute in at least `FLOOR` of the full method's edits and keep the object's
/// path (mean mask IoU ≥ `IOU_FLOOR`). Measured on the committed model (stage 9): 6 of 6, IoU
/// 0.601 (the previous ones: 5 of 6, IoU 0.565; 4 of 6, 0.549; 3 of 6, 0.489). The floors
/// leave one edit of slack for thread timing, while a model that follows no prompt (the first
/// toy model: 0 of 6) or an edit that drops the source's motion (sampling from noise: IoU
/// 0.07) fails.
#[test]
fn toy_model_edits_beat_the_floor() {
    const FLOOR: f64 = 0.83;
    const IOU_FLOOR: f64 = 0.55;
    let out = scratch("toy-score");
    let scored = run(tav()
        .arg("score")
        .arg("--model")
        .arg(repo().join("assets/toy-model"))
        .args([
            "--device",
            "flex",
            "--clips",
            "2",
            "--tune-steps",
            "50",
            "--inversion-steps",
            "10",
            "--steps",
            "10",
            "--methods",
            "full",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]));
    assert!(scored.status.success(), "{}", stderr(&scored));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("score.json")).unwrap()).unwrap();
    let full = &json["summary"][0];
    assert_eq!(full["method"], "full");
    assert_eq!(full["edits"], 6);
    let success = full["attribute_success"].as_f64().unwrap();
    let iou = full["mean_iou"].as_f64().unwrap();
    println!(
        "toy model, reduced scoring: success {success:.2} (floor {FLOOR}), mask IoU {iou:.3} (floor {IOU_FLOOR})"
    );
    assert!(
        success >= FLOOR,
        "attribute success {success} below {FLOOR}"
    );
    assert!(
        iou >= IOU_FLOOR,
        "mask IoU {iou} below {IOU_FLOOR}: the edits lost the motion"
    );
}

/// `tav pretrain` at its smallest: it writes a complete diffusers folder (f16 weights within
/// the toy model's 10 MB) that `tav check` loads and runs like Stable Diffusion, with its
/// settings and loss curves beside it.
#[test]
fn pretrain_writes_a_model_every_command_loads() {
    let out = scratch("pretrain").join("toy-model");
    let trained = run(tav().arg("pretrain").arg(&out).args([
        "--vae-steps",
        "2",
        "--vae-batch",
        "2",
        "--steps",
        "2",
        "--batch",
        "2",
        "--device",
        "flex",
    ]));
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(
        stderr(&trained).contains("burn's CPU backend"),
        "--device flex trains on burn's CPU backend: {}",
        stderr(&trained)
    );
    for file in [
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
    ] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    tav_tests::assert_loadable_by_diffusers(&out);
    let weights: u64 = [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ]
    .iter()
    .map(|f| std::fs::metadata(out.join(f)).unwrap().len())
    .sum();
    println!("toy model weights: {weights} bytes in f16");
    assert!(weights <= 10_000_000, "{weights} bytes of weights");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tav_pretrain.json")).unwrap()).unwrap();
    assert_eq!(record["report"]["vae_losses"].as_array().unwrap().len(), 2);
    assert_eq!(record["report"]["unet_losses"].as_array().unwrap().len(), 2);
    assert!(record["report"]["latent_scale"].as_f64().unwrap() > 0.0);

    let check = |model: &std::path::Path| {
        let checked = run(tav()
            .arg("check")
            .arg("--model")
            .arg(model)
            .args(["--frames", "2", "--size", "64"]));
        assert!(checked.status.success(), "{}", stderr(&checked));
        checked
    };
    let checked = check(&out);
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("outputs are finite")
            || stderr(&checked).contains("outputs are finite")
    );

    expect_error(
        tav().arg("pretrain").arg(&out).args(["--size", "100"]),
        "multiple of 64",
    );

    // Trained on to predict the velocity: the scheduler config says so, a further stage
    // resumed from it keeps it unless told otherwise, and `check` runs it.
    let prediction = |dir: &std::path::Path| {
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("scheduler/scheduler_config.json")).unwrap(),
        )
        .unwrap();
        config["prediction_type"]
            .as_str()
            .unwrap_or("epsilon")
            .to_string()
    };
    assert_eq!(prediction(&out), "epsilon");
    let stage = |from: &std::path::Path, to: &std::path::Path, extra: &[&str]| {
        let trained = run(tav()
            .arg("pretrain")
            .arg(to)
            .arg("--vae-from")
            .arg(from)
            .arg("--resume-from")
            .arg(from)
            .args(["--steps", "2", "--batch", "2", "--device", "flex"])
            .args(extra));
        assert!(trained.status.success(), "{}", stderr(&trained));
    };
    let v = scratch("pretrain").join("toy-model-v");
    stage(&out, &v, &["--prediction-type", "v_prediction"]);
    assert_eq!(prediction(&v), "v_prediction");
    let v_on = scratch("pretrain").join("toy-model-v-on");
    // Every item an edit pair, at the noisy end, with shrunk noise; the decoder on faded
    // latents.
    stage(
        &v,
        &v_on,
        &[
            "--edit-pairs",
            "1",
            "--edit-pair-from",
            "900",
            "--noise-scale-from",
            "0.6",
            "--decoder-steps",
            "2",
            "--decoder-contrast-from",
            "0.5",
        ],
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v_on.join("tav_pretrain.json")).unwrap()).unwrap();
    assert_eq!(
        report["settings"]["noise_scale_from"].as_f64(),
        Some(0.6f32 as f64),
        "{report}"
    );
    assert_eq!(
        report["settings"]["decoder_contrast_from"].as_f64(),
        Some(0.5),
        "{report}"
    );
    // The decoder was trained: its two losses are on the VAE's curve.
    assert_eq!(
        report["report"]["vae_losses"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    // The fading reaches the decoder: the same first decoder batch (the draws before it are
    // the same) without it has another reconstruction error.
    let plain = scratch("pretrain").join("toy-model-plain-decoder");
    stage(&v, &plain, &["--decoder-steps", "2"]);
    let plain_report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plain.join("tav_pretrain.json")).unwrap()).unwrap();
    let first = |r: &serde_json::Value| r["report"]["vae_losses"][0].as_f64().unwrap();
    assert!(
        (first(&report) - first(&plain_report)).abs() > 1e-6,
        "faded {} vs plain {}",
        first(&report),
        first(&plain_report)
    );
    assert_eq!(prediction(&v_on), "v_prediction");
    check(&v_on);
    for (flag, value, says) in [
        ("--edit-pairs", "1.5", "not a share from 0 to 1"),
        ("--edit-pair-from", "1000", "not a timestep of the schedule"),
        ("--empty-captions", "2", "not a share from 0 to 1"),
        ("--offset-noise", "nan", "not an offset-noise scale"),
        ("--offset-noise", "1.5", "not an offset-noise scale"),
        ("--noise-scale-from", "0", "not a noise scale"),
        ("--decoder-contrast-from", "0", "not a latent contrast"),
        ("--decoder-contrast-from", "0.5", "--decoder-steps is 0"),
    ] {
        let refused_dir = scratch("pretrain").join("refused");
        let refused = run(tav().arg("pretrain").arg(&refused_dir).args([
            "--vae-from",
            v.to_str().unwrap(),
            "--steps",
            "1",
            flag,
            value,
        ]));
        assert!(!refused.status.success(), "{flag} {value} was accepted");
        let err = stderr(&refused);
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
        assert!(
            !refused_dir.exists(),
            "{flag} {value} left {refused_dir:?} behind"
        );
    }
}

/// A single-file checkpoint (written from the tiny folder through the key mapping) and a
/// LoRA run through `check` and `pack-web`; other files are refused by name; a refused
/// input leaves no output folder behind.
#[test]
fn single_file_checkpoints_and_loras_through_the_cli() {
    let dir = scratch("single-file");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let single = dir.join("tiny-a.safetensors");
    tav_tests::write_single_file(&tiny_model(), &single);
    // A text-encoder LoRA in kohya's format.
    let q = tav_tests::read_raw(&tiny_model().join("text_encoder/model.safetensors"))
        ["text_model.encoder.layers.0.self_attn.q_proj.weight"]
        .1
        .clone();
    let factor = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let bytes = (0..n)
            .flat_map(|i| (0.05 * ((i % 7) as f32 - 3.0)).to_le_bytes())
            .collect();
        (safetensors::Dtype::F32, shape, bytes)
    };
    let stem = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
    let lora = dir.join("style.safetensors");
    tav_tests::write_raw(
        &lora,
        &[
            (format!("{stem}.lora_down.weight"), factor(vec![2, q[1]])),
            (format!("{stem}.lora_up.weight"), factor(vec![q[0], 2])),
        ]
        .into_iter()
        .collect(),
    );
    let lora_arg = format!("{}:0.5", lora.display());
    let out = run(tav()
        .args([
            "check", "--device", "flex", "--frames", "2", "--size", "64", "--model",
        ])
        .arg(&single)
        .arg("--model-config")
        .arg(tiny_model())
        .args(["--lora", &lora_arg]));
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("single-file checkpoint") && stdout.contains("merged at scale 0.5"),
        "{stdout}"
    );
    assert!(stdout.contains("all components ran"), "{stdout}");
    // Without the folder's configs, the tiny text encoder's heads cannot be told from shapes.
    let mut cmd = tav();
    cmd.args(["check", "--device", "flex", "--model"])
        .arg(&single);
    expect_error(&mut cmd, "--model-config");
    // Pickles are never opened.
    let ckpt = dir.join("model.ckpt");
    std::fs::write(&ckpt, b"not opened").unwrap();
    let mut cmd = tav();
    cmd.args(["check", "--device", "flex", "--model"])
        .arg(&ckpt);
    expect_error(&mut cmd, "never unpickles");

    // pack-web bakes the LoRA into the shards; the fingerprint stays the base model's.
    let pack = |name: &str, model: &Path, extra: &[&str]| {
        let target = dir.join(name);
        let out = run(tav().arg("pack-web").arg(model).arg(&target).args(extra));
        assert!(out.status.success(), "{}", stderr(&out));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(target.join("manifest.json")).unwrap()).unwrap();
        manifest
    };
    let config = tiny_model().display().to_string();
    let folder = pack("folder", &tiny_model(), &[]);
    let plain = pack("single", &single, &["--model-config", &config]);
    let styled = pack(
        "styled",
        &single,
        &["--model-config", &config, "--lora", &lora_arg],
    );
    let text_shards = |m: &serde_json::Value| -> Vec<String> {
        m["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["component"] == "text_encoder")
            .map(|s| s["sha256"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(folder["unet_fingerprint"], plain["unet_fingerprint"]);
    assert_eq!(plain["unet_fingerprint"], styled["unet_fingerprint"]);
    assert_ne!(
        text_shards(&plain),
        text_shards(&styled),
        "the LoRA is baked in"
    );

    // A refused input leaves no output folder (and no log) behind.
    let refused = dir.join("refused-run");
    let mut cmd = tav();
    cmd.args([
        "tune",
        "--device",
        "flex",
        "--prompt",
        "x",
        "--video",
        "/nonexistent/clip.mp4",
        "--model",
    ])
    .arg(&single)
    .arg("--model-config")
    .arg(tiny_model())
    .arg("--out")
    .arg(&refused);
    small(&mut cmd);
    expect_error(&mut cmd, "/nonexistent/clip.mp4");
    let mut cmd = tav();
    cmd.args(["tune", "--prompt", "x", "--video"])
        .arg(car_turn())
        .arg("--model")
        .arg(&ckpt)
        .arg("--out")
        .arg(&refused);
    expect_error(&mut cmd, "never unpickles");
    assert!(!refused.exists(), "nothing written for a refused input");
}

/// Every setting of the whole job is checked before any work: a hostile or mistyped value
/// gets one line naming the setting as the user wrote it (flag or job-file key), exit ≠ 0, no
/// panic, and no output folder left behind.
#[test]
fn hostile_settings_are_refused_before_any_work() {
    let dir = scratch("settings");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let toy_job = repo().join("jobs/toy.toml");
    let out = dir.join("out");
    let refused = |cmd: &mut Command, needle: &str| {
        expect_error(cmd, needle);
        assert!(!out.exists(), "{needle}: nothing is left behind");
    };
    let run_toy = |extra: &[&str]| {
        let mut cmd = tav();
        cmd.arg("run")
            .arg(&toy_job)
            .args(["--device", "flex", "--quiet", "--out"])
            .arg(&out)
            .args(extra);
        cmd
    };
    for (flags, needle) in [
        (
            &["--lr", "inf"][..],
            "'--lr <LR>': inf must be a finite number above 0",
        ),
        (&["--lr", "0"], "'--lr <LR>': 0 must be"),
        (
            &["--guidance", "nan"],
            "'--guidance <GUIDANCE>': NaN is out of range",
        ),
        (
            &["--guidance=-2"],
            "'--guidance <GUIDANCE>': -2 is out of range",
        ),
        (
            &["--guidance-rescale", "5"],
            "'--guidance-rescale <GUIDANCE_RESCALE>': 5 is out of range",
        ),
        (&["--steps", "0"], "'--steps <STEPS>': 0 is out of range"),
        (
            &["--inference-steps", "0"],
            "'--inference-steps <INFERENCE_STEPS>': 0 is out of range",
        ),
        (
            &["--inversion-steps", "5000"],
            "'--inversion-steps <INVERSION_STEPS>': 5000 is out of range",
        ),
        (
            &["--frames", "18446744073709551615"],
            "'--frames <FRAMES>': 18446744073709551615 is out of range",
        ),
        (
            &["--start", "18446744073709551615", "--stride", "3"],
            "reaches past any video's length",
        ),
        (
            &["--width", "100000000"],
            "'--width <WIDTH>': 100000000 is not a positive multiple of 64",
        ),
    ] {
        refused(&mut run_toy(flags), needle);
    }
    // Every subcommand bounds its sizes and counts while parsing (they overflowed before).
    for args in [
        &["plan", "--frames", "18446744073709551615"][..],
        &["check", "--frames", "18446744073709551615"],
        &[
            "sample",
            "--prompt",
            "x",
            "--frames",
            "18446744073709551615",
        ],
        &["bench", "--frames", "18446744073709551615"],
        &["score", "--frames", "18446744073709551615"],
        &["toy-clip", "--frames", "18446744073709551615"],
    ] {
        let mut cmd = tav();
        cmd.args(args);
        expect_error(
            &mut cmd,
            "'--frames <FRAMES>': 18446744073709551615 is out of range",
        );
    }
    let mut cmd = tav();
    cmd.args(["sample", "--prompt", "x", "--guidance", "nan"]);
    expect_error(&mut cmd, "'--guidance <GUIDANCE>': NaN is out of range");
    // LoRA strengths: refused while the flags are parsed.
    for scale in ["1e39", "-1e30", "nan"] {
        let spec = format!("{}:{scale}", dir.join("style.safetensors").display());
        refused(&mut run_toy(&["--lora", &spec]), "--lora");
    }
    // The same settings in a job file are named by their key.
    let job = |name: &str, text: &str| {
        let path = dir.join(name);
        let toml = std::fs::read_to_string(&toy_job)
            .unwrap()
            .replace("../assets", &repo().join("assets").display().to_string());
        std::fs::write(&path, format!("{toml}\n{text}")).unwrap();
        path
    };
    let with_key = |name: &str, from: &str, to: &str, needle: &str| {
        let path = job(name, "");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
        let mut cmd = tav();
        cmd.arg("run")
            .arg(&path)
            .args(["--device", "flex", "--quiet", "--out"])
            .arg(&out);
        refused(&mut cmd, needle);
    };
    with_key(
        "lr.toml",
        "learning_rate = 3e-4",
        "learning_rate = inf",
        "`[tune] learning_rate` in",
    );
    with_key(
        "frames.toml",
        "frames = 8",
        "frames = 9223372036854775807",
        "`[clip] frames` in",
    );
    with_key(
        "rescale.toml",
        "guidance_rescale = 0.7",
        "guidance_rescale = 5",
        "`[edit] guidance_rescale` in",
    );
    with_key(
        "window.toml",
        "guidance_rescale = 0.7",
        "guidance_rescale = 0.7\nwindow = 1",
        "`[edit] window` in",
    );
    with_key(
        "steps.toml",
        "steps = 300",
        "steps = 0",
        "`[tune] steps` in",
    );
    with_key(
        "inversion.toml",
        "inversion_steps = 25",
        "inversion_steps = 5000",
        "`[edit] inversion_steps` in",
    );
    with_key(
        "prompts.toml",
        "prompts = [\"a blue circle is moving on the road\", \"a red circle is moving on the grass\", \"a red square is moving on the road\"]",
        "prompts = []",
        "no edit prompts",
    );
    with_key(
        "lora.toml",
        "model = ",
        "lora = [{ path = \"style.safetensors\", scale = nan }]\nmodel = ",
        "`lora[0].scale`",
    );
    // An output folder that cannot be created is found before the model loads.
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut cmd = tav();
    cmd.arg("run")
        .arg(&toy_job)
        .args(["--device", "flex", "--quiet", "--out"])
        .arg(file.join("out"));
    expect_error(&mut cmd, "cannot create");
    // Control characters in user text (here a path) are escaped in what tav prints.
    let mut cmd = tav();
    cmd.args(["tune", "--device", "flex", "--prompt", "x", "--video"])
        .arg("/nonexistent/\u{1b}[31mred\u{7}.mp4")
        .arg("--out")
        .arg(&out);
    let output = run(&mut cmd);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("\\u{1b}[31mred\\u{7}.mp4"), "{message}");
    assert!(
        !message.contains('\u{1b}') && !message.contains('\u{7}'),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tav pack-web` runs `tav check`'s checks before it writes anything: a single file whose
/// block numbering does not match the configs it is packed with is refused naming the
/// tensor, and nothing is written; a good one packs.
#[test]
fn pack_web_checks_the_model_before_packing() {
    let dir = scratch("pack-check");
    let _ = std::fs::remove_dir_all(&dir);
    let fixtures = repo().join("tests/fixtures/interop");
    let single = fixtures.join("single_file_fp16.safetensors");
    // The folder's configs, with one layer fewer per block than the file holds.
    let configs = dir.join("configs");
    for part in ["unet", "vae", "text_encoder", "scheduler"] {
        std::fs::create_dir_all(configs.join(part)).unwrap();
        let name = if part == "scheduler" {
            "scheduler_config.json"
        } else {
            "config.json"
        };
        let text = std::fs::read_to_string(fixtures.join("base").join(part).join(name)).unwrap();
        let text = if part == "unet" {
            text.replace("\"layers_per_block\": 2", "\"layers_per_block\": 1")
        } else {
            text
        };
        std::fs::write(configs.join(part).join(name), text).unwrap();
    }
    let out = dir.join("packed");
    let mut cmd = tav();
    cmd.arg("pack-web")
        .arg(&single)
        .arg(&out)
        .arg("--model-config")
        .arg(&configs);
    let output = run(&mut cmd);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("single_file_fp16.safetensors") && message.contains("tensor `"),
        "{message}"
    );
    assert!(!out.exists(), "nothing written");
    // With its own configs inferred, it packs.
    let mut cmd = tav();
    cmd.arg("pack-web").arg(&single).arg(&out);
    let output = run(&mut cmd);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(out.join("manifest.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tuned weights holding NaN are refused before the model loads; weights missing a tuned
/// layer are refused naming it.
#[test]
fn edit_refuses_damaged_tuned_weights() {
    use tav_core::delta::{TuneMeta, TunedWeights};
    use tav_core::weights::HostTensor;
    let dir = scratch("damaged-tuned");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let unet = tav_core::weights::SafetensorsFile::open(
        &tiny_model().join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let meta = TuneMeta {
        base_fingerprint: tav_core::delta::fingerprint(&unet),
        prompt: "a car".into(),
        video: car_turn().display().to_string(),
        frames: 2,
        stride: 8,
        width: 64,
        height: 64,
        steps: 1,
        steps_done: 1,
        learning_rate: 3e-5,
        seed: 1,
        ..Default::default()
    };
    let write = |name: &str, value: f32| {
        let key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
        let weights = TunedWeights {
            meta: meta.clone(),
            tensors: [(
                key.to_string(),
                HostTensor::new(vec![32, 32], vec![value; 1024]),
            )]
            .into(),
            moments: Default::default(),
        };
        let path = dir.join(name);
        std::fs::write(&path, weights.to_bytes().unwrap()).unwrap();
        path
    };
    let edit = |tuned: &Path| {
        let mut cmd = tav();
        cmd.args([
            "edit", "--device", "flex", "--quiet", "--prompt", "x", "--model",
        ])
        .arg(tiny_model())
        .arg("--tuned")
        .arg(tuned)
        .arg("--out")
        .arg(dir.join("out"));
        cmd
    };
    expect_error(
        &mut edit(&write("nan.safetensors", f32::NAN)),
        "holds NaN or infinity",
    );
    expect_error(&mut edit(&write("partial.safetensors", 0.01)), "is missing");
    assert!(!dir.join("out").exists(), "nothing written");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP request to `tav demo-web`; the status line and the body.
fn http(port: u16, method: &str, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    (head, response[end + 4..].to_vec())
}

/// `tav demo-web` (the README's demo command) with its package as it is: it packs the model it
/// is given (a toy model folder) and serves the page, the model with `"kind": "toy"` and the
/// example clip, refuses anything but GET/HEAD and paths outside the site, and packs again when
/// the model is newer than its pack.
#[test]
fn demo_web_serves_the_page_the_toy_model_and_the_example_clip() {
    use std::io::BufRead;
    let model = scratch("demo-web-toy");
    tav_tests::copy_dir(&repo().join("assets/toy-model"), &model);
    let packed = repo()
        .join("target/demo-web")
        .join(model.file_name().unwrap());
    // Started, it prints the URL once the model is packed; stopped, what it said on stderr.
    let start = || {
        let mut child = tav()
            .args(["demo-web", "--port", "0", "--no-build", "--model"])
            .arg(&model)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tav demo-web starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("a URL on its first line: {line:?}"));
        (child, port)
    };
    let stop = |mut child: std::process::Child| {
        use std::io::Read;
        child.kill().unwrap();
        child.wait().unwrap();
        let mut said = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut said)
            .unwrap();
        said
    };

    let (child, port) = start();
    let (head, body) = http(port, "GET", "/");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("text/html"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("<title>tav"));
    let (head, body) = http(port, "GET", "/model/manifest.json");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["kind"], "toy", "the toy model is packed as toy");
    let (head, body) = http(port, "GET", "/examples/toy-clip.gif");
    assert!(
        head.contains("image/gif") && body.starts_with(b"GIF89a"),
        "{head}"
    );
    let (head, _) = http(port, "HEAD", "/gif.js");
    assert!(head.contains("text/javascript"), "{head}");
    assert!(http(port, "POST", "/").0.starts_with("HTTP/1.1 405"));
    for outside in [
        "/../Cargo.toml",
        "/model/../../Cargo.toml",
        "/%2e%2e/Cargo.toml",
    ] {
        let (head, _) = http(port, "GET", outside);
        assert!(head.starts_with("HTTP/1.1 404"), "{outside}: {head}");
    }
    let said = stop(child);
    assert!(
        said.contains("packing"),
        "packs a model it has not packed: {said}"
    );

    // Fresh: served as packed. Then the model changes: packed again.
    let said = stop(start().0);
    assert!(
        !said.contains("packing"),
        "a fresh pack is served as it is: {said}"
    );
    std::thread::sleep(Duration::from_millis(20));
    let config = model.join("unet/config.json");
    std::fs::write(&config, std::fs::read(&config).unwrap()).unwrap();
    let said = stop(start().0);
    assert!(
        said.contains("packing"),
        "a model newer than its pack is packed again: {said}"
    );

    let _ = std::fs::remove_dir_all(&model);
    let _ = std::fs::remove_dir_all(&packed);
}

/// A batch manifest for the toy model: shared settings and one `[[clips]]` per entry of
/// `clips` (name, video, edits), in `dir`.
fn batch_manifest(dir: &Path, clips: &[(&str, &Path, &[&str])]) -> PathBuf {
    let model = repo().join("assets/toy-model");
    let mut text = format!(
        "model = {model:?}\noutput = \"out\"\n\
         [clip]\nframes = 2\nstride = 1\nwidth = 64\nheight = 64\n\
         [tune]\nsteps = 6\nlearning_rate = 3e-4\ncheckpoint_every = 1\n\
         [edit]\ninversion_steps = 2\ninference_steps = 2\nguidance = 4.0\nguidance_rescale = 0.7\n"
    );
    for (name, video, edits) in clips {
        text.push_str(&format!(
            "\n[[clips]]\nname = {name:?}\nvideo = {video:?}\n\
             prompt = \"a red circle is moving on the road\"\nedits = {edits:?}\n"
        ));
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("batch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn batch_shard(manifest: &Path, index: usize, count: usize) -> Command {
    let mut cmd = tav();
    cmd.current_dir(manifest.parent().unwrap()).args([
        "batch",
        manifest.file_name().unwrap().to_str().unwrap(),
        "--index",
        &index.to_string(),
        "--count",
        &count.to_string(),
        "--device",
        "flex",
        "--json",
    ]);
    cmd
}

/// Every file of a finished clip's folder with its modification time.
fn stamps(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
        .collect();
    files.sort();
    files
}

/// `tav batch` as a scheduler runs it: a 3-clip manifest as 3 processes (`--index 0..2
/// --count 3`), one killed mid-tuning; the rerun resumes it from its checkpoint, skips the
/// finished clips without touching their files, and every clip ends with its edits.
#[test]
fn batch_shards_resume_after_a_kill_and_skip_finished_clips() {
    let dir = scratch("batch");
    let _ = std::fs::remove_dir_all(&dir);
    let clip = repo().join("assets/toy-clip.gif");
    let clips: [(&str, &Path, &[&str]); 3] = [
        (
            "red-to-blue",
            &clip,
            &["a blue circle is moving on the road"],
        ),
        (
            "two-edits",
            &clip,
            &[
                "a red square is moving on the road",
                "a red circle is moving on the grass",
            ],
        ),
        ("to-grass", &clip, &["a red circle is moving on the grass"]),
    ];
    let manifest = batch_manifest(&dir, &clips);
    let out = dir.join("out");

    let mut shards: Vec<std::process::Child> = (0..3)
        .map(|i| {
            batch_shard(&manifest, i, 3)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Shard 1 is killed once its clip has a checkpoint: mid-tuning.
    let checkpoint = out.join("two-edits/checkpoint.safetensors");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !checkpoint.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    shards[1].kill().unwrap();
    shards[1].wait().unwrap();
    for i in [0, 2] {
        assert!(shards[i].wait().unwrap().success(), "shard {i} finishes");
    }
    assert!(checkpoint.exists(), "shard 1 checkpointed before the kill");
    assert!(
        !out.join("two-edits/done.json").exists(),
        "the killed clip is not marked done"
    );
    let before: Vec<_> = ["red-to-blue", "to-grass"]
        .iter()
        .map(|name| stamps(&out.join(name)))
        .collect();

    // The rerun: every shard again.
    let mut said = Vec::new();
    for i in 0..3 {
        let again = run(&mut batch_shard(&manifest, i, 3));
        assert!(again.status.success(), "shard {i}: {}", stderr(&again));
        said.push(String::from_utf8_lossy(&again.stdout).into_owned());
    }
    assert!(said[1].contains("resuming from"), "{}", said[1]);
    for i in [0, 2] {
        assert!(said[i].contains("skipped"), "shard {i}: {}", said[i]);
    }
    for (name, files) in ["red-to-blue", "to-grass"].iter().zip(&before) {
        assert_eq!(
            &stamps(&out.join(name)),
            files,
            "{name}'s finished outputs are left as they were"
        );
    }
    // Every clip has its edits, each a 64×64 video of 2 frames, and its done mark.
    for (name, _, edits) in &clips {
        let folder = out.join(name);
        assert!(folder.join("done.json").exists(), "{name} is done");
        let gifs: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "gif")
                    && !p.file_name().unwrap().to_string_lossy().starts_with("grid")
            })
            .collect();
        assert_eq!(gifs.len(), edits.len(), "{name}: one video per edit");
        for gif in gifs {
            let (w, h, frames) = gif_frames(&gif);
            assert_eq!((w, h, frames.len()), (64, 64, 2), "{}", gif.display());
        }
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary-1-of-3.json")).unwrap()).unwrap();
    assert_eq!(summary["clips"][0]["clip"], "two-edits");
    assert_eq!(summary["clips"][0]["status"], "done");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary-0-of-3.json")).unwrap()).unwrap();
    assert_eq!(summary["clips"][0]["status"], "skipped");

    // One clip that cannot be read fails, named, and the others still run.
    let broken = dir.join("broken.gif");
    std::fs::write(&broken, b"GIF89a not really").unwrap();
    let second = dir.join("second");
    let manifest = batch_manifest(
        &second,
        &[
            (
                "unreadable",
                &broken,
                &["a blue circle is moving on the road"],
            ),
            ("fine", &clip, &["a blue circle is moving on the road"]),
        ],
    );
    let out_run = run(&mut batch_shard(&manifest, 0, 1));
    assert!(!out_run.status.success(), "a failed clip fails the shard");
    assert!(
        stderr(&out_run).contains("unreadable"),
        "{}",
        stderr(&out_run)
    );
    assert!(second.join("out/fine/done.json").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(second.join("out/summary-0-of-1.json")).unwrap())
            .unwrap();
    assert_eq!(summary["clips"][0]["status"], "failed");
    assert_eq!(summary["clips"][1]["status"], "done");

    // A manifest that cannot run is refused before any work, naming the field.
    let dup = dir.join("dup");
    let manifest = batch_manifest(
        &dup,
        &[
            ("same", &clip, &["a blue circle is moving on the road"]),
            ("same", &clip, &["a red square is moving on the road"]),
        ],
    );
    expect_error(&mut batch_shard(&manifest, 0, 1), "clips[1].name");
    assert!(!dup.join("out").exists(), "nothing written");
    expect_error(&mut batch_shard(&manifest, 3, 3), "--index 3");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Slurm example runs as the tasks of its array would: each task with its
/// `SLURM_ARRAY_TASK_ID`, `tav` on the path; together they finish every clip. Its array's
/// size is the shard count it passes.
#[test]
fn the_slurm_example_runs_a_batch_as_its_array_tasks() {
    let script = repo().join("docs/scale-out/tav-batch.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    let array = text
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array=0-"))
        .expect("an #SBATCH --array=0-N line");
    let last: usize = array.trim().parse().unwrap();
    let shards: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("shards="))
        .expect("shards=N")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(shards, last + 1, "the shard count is the array's size");

    let dir = scratch("slurm");
    let _ = std::fs::remove_dir_all(&dir);
    let clip = repo().join("assets/toy-clip.gif");
    let manifest = batch_manifest(
        &dir,
        &[
            ("first", &clip, &["a blue circle is moving on the road"]),
            ("second", &clip, &["a red square is moving on the road"]),
        ],
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_tav")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for task in 0..shards {
        let out = run(Command::new("bash")
            .arg(&script)
            .current_dir(&dir)
            .env("PATH", &path)
            .env("XDG_CACHE_HOME", scratch("cache"))
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("TAV_BATCH_FLAGS", "--device flex")
            .env("TAV_MANIFEST", &manifest));
        assert!(out.status.success(), "task {task}: {}", stderr(&out));
    }
    for name in ["first", "second"] {
        assert!(
            dir.join("out").join(name).join("done.json").exists(),
            "{name}"
        );
    }
    for task in 0..shards {
        assert!(
            dir.join(format!("out/summary-{task}-of-{shards}.json"))
                .exists()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Editing past the tuned length: tuned on 4 frames spread over a 20-frame clip, then the
/// whole clip (`--frames all`) inverted and edited at once and in windows; both give a
/// video of every frame. Windows that cannot advance, and `all` of the endless demo clip,
/// are refused before any work.
#[test]
fn edits_reach_past_the_tuned_frames_whole_and_in_windows() {
    let dir = scratch("long");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = repo().join("assets/toy-model");
    let clip = dir.join("clip.gif");
    let made = run(tav()
        .args(["toy-clip", "--seed", "3", "--frames", "20"])
        .arg(&clip));
    assert!(made.status.success(), "{}", stderr(&made));
    let prompt = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let tuned = dir.join("tuned");
    let tune = run(tav()
        .args(["tune", "--device", "flex", "--frames", "4", "--stride", "5"])
        .args([
            "--width", "64", "--height", "64", "--steps", "3", "--prompt",
        ])
        .arg(&prompt)
        .arg("--model")
        .arg(&model)
        .arg("--video")
        .arg(&clip)
        .arg("--out")
        .arg(&tuned));
    assert!(tune.status.success(), "{}", stderr(&tune));
    let edit = |out: &Path, extra: &[&str]| {
        let mut cmd = tav();
        cmd.args([
            "edit", "--device", "flex", "--frames", "all", "--stride", "1",
        ])
        .args([
            "--inversion-steps",
            "2",
            "--inference-steps",
            "2",
            "--guidance",
            "4",
        ])
        .args(["--prompt", "a blue circle is moving on the road"])
        .args(extra)
        .arg("--model")
        .arg(&model)
        .arg("--video")
        .arg(&clip)
        .arg("--tuned")
        .arg(tuned.join("tuned.safetensors"))
        .arg("--out")
        .arg(out);
        cmd
    };
    for (name, extra) in [
        ("whole", &[][..]),
        ("windowed", &["--window", "6", "--window-overlap", "2"][..]),
    ] {
        let out = dir.join(name);
        let done = run(&mut edit(&out, extra));
        assert!(done.status.success(), "{name}: {}", stderr(&done));
        let gif = out.join("01-a-blue-circle-is-moving-on-the-road.gif");
        let (w, h, frames) = gif_frames(&gif);
        assert_eq!(
            (w, h, frames.len()),
            (64, 64, 20),
            "{name}: every frame edited"
        );
        assert!(
            variance(&frames[19]) > 10.0,
            "{name}: the last frame is a picture"
        );
    }
    expect_error(
        &mut edit(
            &dir.join("bad"),
            &["--window", "4", "--window-overlap", "4"],
        ),
        "--window",
    );
    assert!(!dir.join("bad").exists(), "nothing written");
    expect_error(
        tav()
            .args([
                "run",
                "jobs/demo.toml",
                "--video",
                "demo",
                "--frames",
                "all",
                "--steps",
                "1",
            ])
            .current_dir(repo()),
        "demo clip has no end",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The windowed plan: every step's peak is the same for 64 and 640 frames (the UNet sees one
/// window and its anchor), while the whole-clip plan grows with the clip.
#[test]
fn the_windowed_plan_does_not_grow_with_the_clip() {
    let plan = |frames: &str, window: Option<&str>| -> Vec<(String, u64, u64)> {
        let mut cmd = tav();
        cmd.args([
            "plan", "--config", "sd15", "--f16", "--json", "--frames", frames,
        ]);
        if let Some(w) = window {
            cmd.args(["--window", w, "--tune-frames", "8"]);
        }
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["step"].as_str().unwrap().to_string(),
                    v["peak_bytes"].as_u64().unwrap(),
                    v["frames"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let short = plan("64", Some("16"));
    let long = plan("640", Some("16"));
    assert_eq!(short, long, "windowed: the same peak at 64 and 640 frames");
    for (step, _, frames) in &short {
        let expected = if step == "tuning" { 8 } else { 17 };
        assert_eq!(*frames, expected, "{step}: the frames the UNet sees");
    }
    let whole_short = plan("64", None);
    let whole_long = plan("640", None);
    for (a, b) in whole_short.iter().zip(&whole_long) {
        assert!(b.1 > a.1, "whole-clip {}: grows with the clip", a.0);
    }
}

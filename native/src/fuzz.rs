//! Fuzzing every loader on stable Rust: a mutation fuzzer over seed files (real files of each
//! format, several written by other tools), one target per loader. An input that panics is a
//! crash; one that takes longer than [`HANG`] is a hang; either fails the run, with the input
//! saved under `target/fuzz-findings/` to reproduce it.
//!
//! The short run is part of the test command (`TAV_FUZZ_RUNS` per target, default 300); the
//! long run is `TAV_FUZZ_RUNS=1000000 cargo test -p tav-native --no-default-features --bin tav
//! fuzz -- --nocapture --test-threads 1` (docs/testing.md). Each target reports its executions,
//! crashes and hangs. `TAV_FUZZ_INPUT=target/fuzz-findings/FILE` replays one saved input.
//!
//! Not coverage-guided (that would need an instrumented build of burn, an hour on 2 cores);
//! the mutations know the formats instead: most land in a safetensors header's JSON, numbers
//! in text become the values that break arithmetic (0, -1, 2⁶⁴−1, 1e309, NaN), and seeds are
//! spliced with each other.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use tav_core::delta::TunedWeights;
use tav_core::lora::Lora;
use tav_core::single_file::{self, SingleFile};
use tav_core::weights::{SafetensorsFile, TensorSource};

use crate::video::{self, Sampling};

/// Longer than this for one input is a hang (the slowest seed takes milliseconds).
const HANG: Duration = Duration::from_secs(5);

/// xorshift64*: fast, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that break arithmetic, as text.
const NUMBERS: [&str; 12] = [
    "0",
    "-1",
    "1",
    "18446744073709551615",
    "9223372036854775807",
    "4294967296",
    "1e309",
    "-1e309",
    "nan",
    "inf",
    "1e-320",
    "65536",
];

/// Bytes that break parsers.
const BYTES: [u8; 8] = [0, 0xff, 0x7f, 0x80, b'"', b'[', b'}', b','];

/// The JSON header's end in a safetensors file (8-byte length, then the header).
fn header_end(data: &[u8]) -> usize {
    if data.len() < 8 {
        return data.len();
    }
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    n.saturating_add(8).min(data.len())
}

/// One mutation of `data`, biased to `focus` (a region such as a header) half the time.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>], focus: usize) {
    let span = if rng.below(2) == 0 && focus > 0 {
        focus
    } else {
        data.len()
    };
    let at = |rng: &mut Rng, data: &Vec<u8>| rng.below(span.min(data.len()).max(1));
    match rng.below(9) {
        0 if !data.is_empty() => {
            let i = at(rng, data);
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = at(rng, data);
            data[i] = BYTES[rng.below(BYTES.len())];
        }
        2 => {
            // A number in text replaced by one that breaks arithmetic.
            let starts: Vec<usize> = (0..span.min(data.len()))
                .filter(|&i| {
                    data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_alphanumeric())
                })
                .collect();
            if !starts.is_empty() {
                let s = starts[rng.below(starts.len())];
                let mut e = s;
                while e < data.len() && (data[e].is_ascii_digit() || b".eE-+".contains(&data[e])) {
                    e += 1;
                }
                let number = NUMBERS[rng.below(NUMBERS.len())].as_bytes();
                data.splice(s..e, number.iter().copied());
            }
        }
        3 if !data.is_empty() => {
            let i = at(rng, data);
            let n = rng.below(16).min(data.len() - i);
            data.drain(i..i + n);
        }
        4 if !data.is_empty() => {
            let i = at(rng, data);
            let n = rng.below(16).min(data.len() - i);
            let chunk: Vec<u8> = data[i..i + n].to_vec();
            let j = at(rng, data);
            data.splice(j..j, chunk);
        }
        5 => {
            let keep = rng.below(data.len() + 1);
            data.truncate(keep);
        }
        6 if !seeds.is_empty() => {
            // Splice another seed's tail onto this one's head.
            let other = &seeds[rng.below(seeds.len())];
            let i = rng.below(data.len() + 1);
            let j = rng.below(other.len() + 1);
            data.truncate(i);
            data.extend_from_slice(&other[j..]);
        }
        7 if data.len() >= 8 => {
            // The header length itself.
            let n = [0u64, 1, 7, u64::MAX, u32::MAX as u64, data.len() as u64][rng.below(6)];
            data[..8].copy_from_slice(&n.to_le_bytes());
        }
        _ => {
            let i = rng.below(data.len() + 1);
            data.insert(i, BYTES[rng.below(BYTES.len())]);
        }
    }
}

/// The input running now and since when (for the hang watchdog).
type Running = Option<(Instant, Vec<u8>)>;

/// What one target did.
#[derive(Debug, Default)]
struct Report {
    executions: u64,
    crashes: Vec<String>,
    hangs: Vec<String>,
    rejected: u64,
}

/// Runs `target` on `runs` mutants of `seeds` (and the seeds themselves).
fn fuzz(
    name: &str,
    seeds: &[Vec<u8>],
    focus: fn(&[u8]) -> usize,
    runs: u64,
    target: &dyn Fn(&[u8]) -> Result<(), String>,
) -> Report {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    // `TAV_FUZZ_INPUT=FILE`: run that one input (a saved finding) and nothing else.
    let replay = std::env::var_os("TAV_FUZZ_INPUT").map(|f| vec![read(Path::new(&f))]);
    let (seeds, runs) = match &replay {
        Some(input) => (&input[..], 0),
        None => (seeds, runs),
    };
    let findings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-findings");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64 ^ runs);
    let mut report = Report::default();
    // A hang cannot be interrupted in-process: a watchdog saves the input that runs past
    // [`HANG`] and stops the process, so a hang fails the run with its input on disk.
    let current: std::sync::Arc<std::sync::Mutex<Running>> = std::sync::Arc::default();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (current, done, findings, name) = (
            current.clone(),
            done.clone(),
            findings.clone(),
            name.to_string(),
        );
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let guard = current.lock().unwrap();
                if let Some((began, input)) = guard.as_ref()
                    && began.elapsed() > HANG
                {
                    let _ = std::fs::create_dir_all(&findings);
                    let file = findings.join(format!("{name}-hang"));
                    let _ = std::fs::write(&file, input);
                    eprintln!(
                        "fuzz {name}: hang (over {HANG:?}); input saved to {}",
                        file.display()
                    );
                    std::process::abort();
                }
            }
        })
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    for i in 0..runs + seeds.len() as u64 {
        let input = match seeds.get(i as usize) {
            Some(seed) => seed.clone(),
            None => {
                let mut data = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let f = focus(&data);
                    mutate(&mut rng, &mut data, seeds, f);
                }
                data
            }
        };
        let began = Instant::now();
        *current.lock().unwrap() = Some((began, input.clone()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        let took = began.elapsed();
        *current.lock().unwrap() = None;
        report.executions += 1;
        let save = |kind: &str| {
            let _ = std::fs::create_dir_all(&findings);
            let file = findings.join(format!("{name}-{kind}-{i}"));
            let _ = std::fs::write(&file, &input);
            file.display().to_string()
        };
        match outcome {
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report
                    .crashes
                    .push(format!("{message} ({})", save("crash")));
            }
            Ok(Err(_)) => report.rejected += 1,
            Ok(Ok(())) => {}
        }
        if took > HANG {
            report.hangs.push(format!("{took:?} ({})", save("hang")));
        }
    }
    std::panic::set_hook(hook);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog.join();
    println!(
        "fuzz {name}: {} executions in {:.1} s, {} rejected with an error, {} crashes, {} hangs",
        report.executions,
        started.elapsed().as_secs_f64(),
        report.rejected,
        report.crashes.len(),
        report.hangs.len()
    );
    report
}

fn runs() -> u64 {
    std::env::var("TAV_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()))
}

/// Every `.safetensors` file under `dir` whose name passes `keep`.
fn seeds_in(dir: &Path, keep: fn(&str) -> bool) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && keep(&p.file_name().unwrap().to_string_lossy())
        })
        .map(|p| read(&p))
        .collect()
}

fn interop() -> PathBuf {
    repo().join("tests/fixtures/interop")
}

fn check(name: &str, report: Report) {
    assert!(
        report.crashes.is_empty() && report.hangs.is_empty(),
        "fuzz {name}: crashes {:?}, hangs {:?}",
        report.crashes,
        report.hangs
    );
}

fn as_err<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// safetensors: the header and every tensor, in every dtype.
#[test]
fn fuzz_safetensors() {
    let seeds = seeds_in(&interop(), |_| true);
    let target = |data: &[u8]| -> Result<(), String> {
        let file = as_err(SafetensorsFile::from_bytes(
            "fuzz.safetensors",
            data.to_vec(),
        ))?;
        for key in file.keys() {
            let _ = file.fetch(&key);
            let _ = file.fetch_numbers(&key);
            let _ = file.shape_of(&key);
        }
        Ok(())
    };
    check(
        "safetensors",
        fuzz("safetensors", &seeds, header_end, runs(), &target),
    );
}

/// LoRA files: parsing, alphas, metadata, and resolving against a model's layers.
#[test]
fn fuzz_lora() {
    let seeds = seeds_in(&interop(), |n| {
        !n.contains("fused") && !n.starts_with("single")
    });
    let configs = base_configs();
    let device = Device::flex();
    let unet = tav_core::params::unet_param_entries(&configs.unet, &device).unwrap();
    let target = |data: &[u8]| -> Result<(), String> {
        let file = as_err(SafetensorsFile::from_bytes(
            "fuzz.safetensors",
            data.to_vec(),
        ))?;
        let lora = as_err(Lora::read(&file, 0.8))?;
        let patches = as_err(tav_core::lora::Patches::resolve(
            &[&lora],
            tav_core::lora::Target::Unet,
            &unet,
            Some(&single_file::UnetLayout::of(&configs.unet)),
        ))?;
        let _ = patches.is_empty();
        Ok(())
    };
    check("lora", fuzz("lora", &seeds, header_end, runs(), &target));
}

fn base_configs() -> single_file::Configs {
    let base = interop().join("base");
    let text = |p: &str| std::fs::read_to_string(base.join(p)).unwrap();
    single_file::configs_from_json(
        &text("unet/config.json"),
        &text("vae/config.json"),
        &text("text_encoder/config.json"),
        &text("scheduler/scheduler_config.json"),
    )
    .unwrap()
}

/// A safetensors header (its length and JSON) with zeroed data of the size it declares, so
/// mutants of a large file's header are whole files without copying its data each time.
fn with_zero_data(header: &[u8]) -> Vec<u8> {
    let end = header_end(header);
    let declared = std::str::from_utf8(&header[8.min(end)..end])
        .ok()
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .and_then(|v| {
            v.as_object().map(|o| {
                o.values()
                    .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
                    .max()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let mut file = header[..end].to_vec();
    // Large declarations are left short: the parser must refuse them, not allocate.
    if declared <= 64 << 20 {
        file.resize(end + declared as usize, 0);
    }
    file
}

/// Single files: identification, configs inferred from shapes, the key mapping, and every
/// component's tensors under diffusers' names. Seeds are the headers of a single file written
/// by diffusers' conversion script (data zeroed), so mutations land in names and shapes.
#[test]
fn fuzz_single_file() {
    let seeds: Vec<Vec<u8>> = seeds_in(&interop(), |n| n.starts_with("single"))
        .into_iter()
        .map(|f| f[..header_end(&f)].to_vec())
        .collect();
    let device = Device::flex();
    let target = |header: &[u8]| -> Result<(), String> {
        let data = with_zero_data(header);
        let file = as_err(SafetensorsFile::from_bytes("fuzz.safetensors", data))?;
        let shapes = file.shapes();
        as_err(single_file::identify(&shapes, "fuzz"))?;
        let configs = as_err(single_file::infer_configs(&shapes, "fuzz"))?;
        as_err(tav_core::checkpoint::check_components_fit(&configs, "fuzz"))?;
        as_err(configs.unet.validate("fuzz"))?;
        as_err(configs.vae.validate("fuzz"))?;
        as_err(configs.clip.validate("fuzz"))?;
        let single = as_err(SingleFile::new(file, &configs, &device))?;
        for component in [
            single_file::Component::Unet,
            single_file::Component::Vae,
            single_file::Component::TextEncoder,
        ] {
            let source = single.source(component);
            for key in source.keys().into_iter().take(8) {
                let _ = source.fetch(&key);
                let _ = source.shape_of(&key);
            }
        }
        Ok(())
    };
    check(
        "single_file",
        fuzz("single_file", &seeds, |d| d.len(), runs(), &target),
    );
}

/// Tuned-weights files: metadata JSON, tensors, moments.
#[test]
fn fuzz_tuned_weights() {
    let meta = tav_core::delta::TuneMeta {
        prompt: "a man is skiing".into(),
        video: "clip.mp4".into(),
        frames: 8,
        stride: 2,
        width: 512,
        height: 512,
        steps: 500,
        steps_done: 100,
        learning_rate: 3e-5,
        losses: vec![0.1, 0.2],
        ..Default::default()
    };
    let tensor = |n: usize| tav_core::weights::HostTensor::new(vec![n, 2], vec![0.5; n * 2]);
    let weights = TunedWeights {
        meta,
        tensors: [("a.attn1.to_q.weight".to_string(), tensor(3))].into(),
        moments: [("a.attn1.to_q.weight".to_string(), (tensor(3), tensor(3)))].into(),
    };
    let seeds = vec![weights.to_bytes().unwrap()];
    let target = |data: &[u8]| -> Result<(), String> {
        let file = as_err(SafetensorsFile::from_bytes(
            "fuzz.safetensors",
            data.to_vec(),
        ))?;
        let tuned = as_err(TunedWeights::from_file(&file))?;
        as_err(tuned.check_base("", "fuzz"))
    };
    check(
        "tuned_weights",
        fuzz("tuned_weights", &seeds, header_end, runs(), &target),
    );
}

/// Job files: TOML, then every setting's check.
#[test]
fn fuzz_job_toml() {
    let seeds: Vec<Vec<u8>> = ["toy.toml", "car-turn.toml", "demo.toml"]
        .iter()
        .map(|n| repo().join("jobs").join(n))
        .filter(|p| p.exists())
        .map(|p| read(&p))
        .collect();
    let job_path = repo().join("jobs/fuzz.toml");
    let target = |data: &[u8]| -> Result<(), String> {
        let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
        let job = as_err(crate::jobfile::Job::from_text(text, &job_path))?;
        as_err(job.validate(true, true))
    };
    check(
        "job_toml",
        fuzz("job_toml", &seeds, |d| d.len(), runs(), &target),
    );
}

/// Video and image readers, through the file a user would pass.
fn fuzz_video(name: &str, extension: &str, seeds: Vec<Vec<u8>>) {
    let dir = std::env::temp_dir().join(format!("tav-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = |data: &[u8]| -> Result<(), String> {
        let path = if extension == "png" {
            // A folder of frames.
            let _ = std::fs::write(dir.join("0001.png"), data);
            dir.clone()
        } else {
            let path = dir.join(format!("clip.{extension}"));
            let _ = std::fs::write(&path, data);
            path
        };
        let sampling = Sampling {
            start: 0,
            stride: 1,
            count: 1,
        };
        as_err(video::read_clip(&path, sampling)).map(|_| ())
    };
    let report = fuzz(name, &seeds, |d| d.len().min(64), runs(), &target);
    let _ = std::fs::remove_dir_all(&dir);
    check(name, report);
}

/// A small clip of `frames` frames, for seeds.
fn small_clip(frames: usize) -> video::Clip {
    let (w, h) = (16usize, 16usize);
    video::Clip {
        width: w as u32,
        height: h as u32,
        fps: 8.0,
        frames: (0..frames)
            .map(|f| {
                (0..w * h * 3)
                    .map(|i| ((i * 7 + f * 31) % 256) as u8)
                    .collect()
            })
            .collect(),
    }
}

fn written(write: fn(&Path, &video::Clip) -> video::Result<()>, ext: &str) -> Vec<u8> {
    let path = std::env::temp_dir().join(format!("tav-fuzz-seed-{}.{ext}", std::process::id()));
    write(&path, &small_clip(2)).unwrap();
    let bytes = read(&path);
    let _ = std::fs::remove_file(&path);
    bytes
}

#[test]
fn fuzz_gif() {
    let seeds = vec![
        read(&repo().join("assets/toy-clip.gif")),
        written(video::write_gif, "gif"),
    ];
    fuzz_video("gif", "gif", seeds);
}

#[test]
fn fuzz_mp4() {
    let mut seeds = vec![written(video::write_mp4, "mp4")];
    // A real H.264 clip with an AAC track, as cameras and editors write them.
    let real = repo().join("../shared/videos/man-skiing.mp4");
    if real.exists() {
        seeds.push(read(&real));
    }
    fuzz_video("mp4", "mp4", seeds);
}

#[test]
fn fuzz_png() {
    let path = std::env::temp_dir().join(format!("tav-fuzz-seed-{}.png", std::process::id()));
    let clip = small_clip(1);
    video::write_png(&path, clip.width, clip.height, &clip.frames[0]).unwrap();
    let seed = read(&path);
    let _ = std::fs::remove_file(&path);
    fuzz_video("png", "png", vec![seed]);
}

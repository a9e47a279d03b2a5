//! `tav bench`: times the three steps a job repeats (a UNet forward, a tuning step, a
//! guided sampling step) on random weights at a given model size, and reports the median
//! time and peak GPU memory of each as JSON lines.
//!
//! Peak memory is what burn's memory pools hold on the device after one run of the step,
//! from a clean start (`memory_cleanup` first): the pools keep every page they allocate
//! until cleaned, so this is the step's high-water mark, weights included.

use super::prelude::*;

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use safetensors::Dtype;
use tav_core::config::{SchedulerConfig, UNetConfig};
use tav_core::edit::Denoiser;
use tav_core::limits::DeviceLimits;
use tav_core::plan::{JobShape, PlanInput, plan};
use tav_core::progress::silent;
use tav_core::schedule::Ddim;
use tav_core::schedule::Schedule;
use tav_core::transformer::VideoAttentionOptions;
use tav_core::tune::{StepDraws, TuneBatch, TuneSettings, Tuner};
use tav_core::unet::UNet3D;
use tav_core::vae::Posterior;
use tav_core::weights::RandomInit;
use tav_core::{Result, TavError};

use crate::commands::plan::ModelSize;

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// SD v1.5's UNet or the demo model's.
    pub config: ModelSize,
    pub frames: usize,
    /// Frame side in pixels (a multiple of 64); latents are 1/8 of it.
    pub size: usize,
    pub f16: bool,
    pub kernels: bool,
    /// Whether tuning recomputes each block in backward (`auto`: as `tav tune` decides).
    pub recompute: crate::gpu::RecomputeChoice,
    /// Timed runs per step (after one warm-up run); 0 measures the peak memory only, from
    /// the first run.
    pub runs: usize,
    /// Which steps.
    pub steps: Vec<BenchStep>,
}

/// A step `tav bench` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum BenchStep {
    /// A UNet forward.
    Forward,
    /// A tuning step: forward, backward into the tuned layers, AdamW.
    Tune,
    /// A sampling step with classifier-free guidance (a batch of 2).
    Sample,
}

impl BenchStep {
    /// The name in the JSON lines (and on the command line).
    pub fn name(self) -> &'static str {
        match self {
            BenchStep::Forward => "forward",
            BenchStep::Tune => "tune",
            BenchStep::Sample => "sample",
        }
    }

    /// The step of `tav plan` it is planned as.
    fn planned_as(self) -> &'static str {
        match self {
            BenchStep::Forward => "forward",
            BenchStep::Tune => "tuning",
            BenchStep::Sample => "sampling",
        }
    }
}

/// The kernel families `tav bench --kernel` times alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelFamily {
    /// tav's sparse-causal and temporal attention kernels.
    Attention,
}

fn unet_config(size: ModelSize) -> UNetConfig {
    match size {
        ModelSize::Sd15 => UNetConfig::sd_v1_5(),
        ModelSize::Tiny => crate::demo::tiny_unet_config(),
    }
}

/// The model size's name in the JSON lines.
fn config_name(size: ModelSize) -> &'static str {
    match size {
        ModelSize::Sd15 => "sd15",
        ModelSize::Tiny => "tiny",
    }
}

impl BenchSpec {
    fn validate(&self) -> Result<()> {
        crate::jobfile::check_video(self.frames, self.size, self.size)
    }
}

/// One step's figures.
struct Measured {
    times_ms: Vec<f64>,
    peak_bytes: Option<u64>,
}

/// Runs the benchmark and prints one JSON line per step (and one describing the setup).
pub fn run(
    spec: &BenchSpec,
    device: Device,
    device_name: &str,
    limits: &DeviceLimits,
) -> Result<()> {
    spec.validate()?;
    let cfg = unet_config(spec.config);
    let recompute = crate::commands::resolve_recompute(
        spec.recompute,
        &planned_steps(spec, &cfg, limits, false)?,
    );
    let planned = planned_peaks(spec, &cfg, limits, recompute)?;
    let started = Instant::now();
    // Under --f16 the frozen weights are made in f16 on the host, as `tav --f16` loads them.
    let p = RandomInit { seed: 0 }.builder(&device);
    let p = if spec.f16 {
        p.with_f16_storage(|key| !tav_core::unet::is_trainable(key))
    } else {
        p
    };
    let mut unet = UNet3D::load(&p, &cfg)?;
    if spec.f16 {
        unet = unet.frozen_weights_to_f16(&device)?;
    }
    let parameters: usize = unet
        .params
        .iter()
        .map(|e| e.shape.iter().product::<usize>())
        .sum();
    let header = serde_json::json!({
        "bench": "setup", "device": device_name, "config": config_name(spec.config),
        "parameters": parameters, "frames": spec.frames, "size": spec.size,
        "latent": spec.size / 8, "f16_weights": spec.f16,
        "compute": if spec.f16 { "f16 (tune: mixed precision)" } else { "f32" },
        "kernels": spec.kernels, "recompute": recompute, "runs": spec.runs,
        "load_s": started.elapsed().as_secs_f64(),
    });
    println!("{header}");
    let bench = Bench {
        spec,
        cfg: &cfg,
        device: &device,
        schedule: Schedule::new(&SchedulerConfig::sd_v1_5())?,
        attention: VideoAttentionOptions {
            kernels: spec.kernels,
            f16_compute: spec.f16,
            max_buffer_bytes: limits.max_buffer_bytes,
            recompute,
            ..VideoAttentionOptions::default()
        },
    };
    let latent = spec.size / 8;
    for &step in &spec.steps {
        let measured = match step {
            BenchStep::Forward => bench.forward(&unet)?,
            BenchStep::Tune => bench.tune(&unet)?,
            BenchStep::Sample => bench.sample(&unet)?,
        };
        let forward_flop = tav_core::flops::unet_forward(&cfg, spec.frames, latent, latent);
        let flop = match step {
            BenchStep::Forward => forward_flop,
            BenchStep::Tune => tav_core::flops::tuning_step(forward_flop, recompute),
            BenchStep::Sample => tav_core::flops::sampling_step(forward_flop),
        };
        let median_ms = median(&measured.times_ms);
        let line = serde_json::json!({
            "bench": step.name(), "device": device_name, "config": config_name(spec.config),
            "flop": flop, "flop_per_s": median_ms.map(|ms| flop / (ms / 1e3)),
            "frames": spec.frames, "size": spec.size, "f16_weights": spec.f16,
            "f16_compute": spec.f16, "kernels": spec.kernels,
            "median_ms": median_ms,
            "min_ms": measured.times_ms.iter().cloned().reduce(f64::min),
            "runs": measured.times_ms.len(),
            "peak_bytes": measured.peak_bytes,
            "peak_gib": measured.peak_bytes.map(|b| b as f64 / (1u64 << 30) as f64),
            "planned_peak_bytes": planned.get(&step),
            "plan_ratio": measured.peak_bytes.zip(planned.get(&step))
                .map(|(m, p)| *p as f64 / m as f64),
        });
        println!("{line}");
    }
    Ok(())
}

/// What `tav plan` predicts for each benchmarked step, with the UNet's weights alone (the
/// benchmark loads no VAE or text encoder), so each line can say how close the plan is.
fn planned_peaks(
    spec: &BenchSpec,
    cfg: &UNetConfig,
    limits: &DeviceLimits,
    recompute: bool,
) -> Result<std::collections::HashMap<BenchStep, u64>> {
    let by_name = [BenchStep::Forward, BenchStep::Tune, BenchStep::Sample]
        .map(|step| (step.planned_as(), step));
    Ok(planned_steps(spec, cfg, limits, recompute)?
        .into_iter()
        .filter_map(|p| {
            by_name
                .iter()
                .find(|(planned, _)| *planned == p.step)
                .map(|(_, bench)| (*bench, p.peak_bytes))
        })
        .collect())
}

/// The plan of the benchmarked job, UNet weights only.
fn planned_steps(
    spec: &BenchSpec,
    cfg: &UNetConfig,
    limits: &DeviceLimits,
    recompute: bool,
) -> Result<Vec<tav_core::plan::StepPlan>> {
    let job = JobShape {
        frames: spec.frames,
        height: spec.size,
        width: spec.size,
        f16: spec.f16,
        kernels: spec.kernels,
        recompute,
    };
    let (_, vae, clip) = crate::commands::plan::configs(None, None)?;
    let mut input = PlanInput::new(cfg, &vae, &clip, job, &Device::flex())?;
    input.vae_params = 0;
    input.text_params = 0;
    Ok(plan(&input, limits))
}

/// What `tav bench --kernel attention` times: the attention kernels alone, at one shape.
#[derive(Debug, Clone)]
pub struct KernelBenchSpec {
    pub tokens: usize,
    pub frames: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// f16 storage (f32 accumulation); needs `shader-f16`.
    pub f16: bool,
    /// Timed runs of each pass, after one warm-up run.
    pub runs: usize,
    /// Which attention kernels: the tiled ones tav runs, or the per-row ones.
    pub tiling: tav_core::kernels::Tiling,
    /// Whether the tiled kernels split a row over a subgroup's invocations.
    pub subgroups: Subgroups,
    /// Which attention: sparse-causal, temporal or both (`true`: temporal).
    pub modes: Vec<bool>,
}

/// How `tav bench --kernel attention` uses subgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subgroups {
    /// As tav runs on this device.
    AsTavRuns,
    /// Split rows with subgroups of this size (`None`: one invocation per row).
    Split(Option<u32>),
}

/// Times the attention kernels alone, sparse-causal and temporal, forward and backward (dq,
/// then dk/dv) separately, on random q/k/v of one video; one JSON line per pass with its
/// FLOP count (from the shape: [`tav_core::flops::AttentionShape`]) and rate.
pub fn run_attention_kernels(
    spec: &KernelBenchSpec,
    device: Device,
    device_name: &str,
) -> Result<()> {
    use tav_core::flops::AttentionShape;
    use tav_core::kernels::{AttentionSpec, attention_backward_only, attention_forward_only};
    if !tav_core::kernels::runs_wgsl(&device) {
        return Err(TavError::InvalidInput(
            "--kernel attention times tav's WGSL kernels: it needs a wgpu adapter, not --device flex"
                .into(),
        ));
    }
    if spec.tokens == 0 || spec.frames == 0 || spec.heads == 0 || spec.head_dim == 0 {
        return Err(TavError::InvalidInput(
            "--tokens, --frames, --heads and --head-dim must be at least 1".into(),
        ));
    }
    if spec.head_dim > tav_core::kernels::MAX_KERNEL_HEAD_DIM {
        return Err(TavError::InvalidInput(format!(
            "--head-dim {} is over the kernels' {}",
            spec.head_dim,
            tav_core::kernels::MAX_KERNEL_HEAD_DIM
        )));
    }
    if spec.f16 && !tav_core::precision::supports_f16(&device) {
        return Err(tav_core::precision::no_f16_error());
    }
    let tiling = spec.tiling;
    if !tav_core::kernels::set_tiling(tiling) {
        return Err(TavError::InvalidInput(
            "the attention kernels' tiling was already chosen in this process".into(),
        ));
    }
    if let Subgroups::Split(size) = spec.subgroups {
        tav_core::kernels::use_subgroups(&device, size);
    }
    let dims = [spec.frames, spec.tokens, spec.heads * spec.head_dim];
    let dtype = if spec.f16 {
        burn::tensor::DType::F16
    } else {
        burn::tensor::DType::F32
    };
    let random = || Tensor::<3>::random(dims, Distribution::Normal(0.0, 1.0), &device).cast(dtype);
    let (q, k, v, d_out) = (random(), random(), random(), random());
    let sync = || {
        device
            .sync()
            .map_err(|e| TavError::Device(format!("{e:?}")))
    };
    let time = |pass: &mut dyn FnMut()| -> Result<Vec<f64>> {
        pass();
        sync()?;
        let mut times = Vec::new();
        for _ in 0..spec.runs.max(1) {
            let start = Instant::now();
            pass();
            sync()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(times)
    };
    for &temporal in &spec.modes {
        let kernel_spec = AttentionSpec {
            frames: spec.frames,
            heads: spec.heads,
            temporal,
        };
        let shape = AttentionShape {
            videos: 1,
            frames: spec.frames,
            tokens: spec.tokens,
            heads: spec.heads,
            head_dim: spec.head_dim,
            temporal,
        };
        let forward_times = time(&mut || {
            drop(attention_forward_only(
                q.clone(),
                k.clone(),
                v.clone(),
                kernel_spec,
            ))
        })?;
        let (out, lse) = attention_forward_only(q.clone(), k.clone(), v.clone(), kernel_spec);
        let backward_times = time(&mut || {
            drop(attention_backward_only(
                [q.clone(), k.clone(), v.clone(), out.clone(), d_out.clone()],
                lse.clone(),
                kernel_spec,
            ))
        })?;
        let lanes = tav_core::kernels::tiled_forward_lanes(
            &device,
            kernel_spec,
            spec.tokens,
            spec.head_dim,
        );
        let mode = if temporal {
            "temporal"
        } else {
            "sparse-causal"
        };
        for (pass, times, flop) in [
            ("forward", &forward_times, shape.forward_flop()),
            ("backward", &backward_times, shape.backward_flop()),
        ] {
            let median_ms = median(times).expect("at least one timed run");
            let line = serde_json::json!({
                "bench": format!("attention.{pass}"), "mode": mode, "device": device_name,
                "tokens": spec.tokens, "frames": spec.frames, "heads": spec.heads,
                "head_dim": spec.head_dim, "keys": shape.keys(),
                // Temporal tiles under three quarters full take the per-row kernels.
                "kernels": if lanes.is_some() { "tiled" } else { "per-row" },
                // Invocations per row of the tiled kernels (several: subgroup shuffles).
                "lanes": lanes.unwrap_or(1),
                "dtype": if spec.f16 { "f16" } else { "f32" },
                "median_ms": median_ms,
                "min_ms": times.iter().cloned().reduce(f64::min),
                "runs": times.len(),
                "flop": flop, "flop_per_s": flop / (median_ms / 1e3),
            });
            println!("{line}");
        }
    }
    Ok(())
}

/// The median, or `None` without values (a memory-only bench).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        None
    } else if n % 2 == 1 {
        Some(sorted[n / 2])
    } else {
        Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0)
    }
}

struct Bench<'a> {
    spec: &'a BenchSpec,
    cfg: &'a UNetConfig,
    device: &'a Device,
    schedule: Schedule,
    attention: VideoAttentionOptions,
}

impl Bench<'_> {
    fn normal<const D: usize>(&self, shape: [usize; D]) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), self.device)
    }

    fn latent_shape(&self, batch: usize) -> [usize; 5] {
        let side = self.spec.size / 8;
        [batch, self.cfg.in_channels, self.spec.frames, side, side]
    }

    fn context(&self, batch: usize) -> Tensor<3> {
        self.normal([batch, 77, self.cfg.cross_attention_dim])
    }

    fn sync(&self) -> Result<()> {
        self.device
            .sync()
            .map_err(|e| TavError::Device(format!("{e:?}")))
    }

    /// Warm-up run, then the timed runs, then one run from a clean pool for the peak. With no
    /// timed runs, the peak of the first run alone (compiling kernels takes no pool memory).
    fn measure(&self, mut once: impl FnMut() -> Result<()>) -> Result<Measured> {
        if self.spec.runs == 0 {
            self.device.memory_cleanup();
            once()?;
            self.sync()?;
            let peak_bytes = self.device.memory_pool_usage().map(|u| u.bytes_reserved);
            return Ok(Measured {
                times_ms: Vec::new(),
                peak_bytes,
            });
        }
        once()?;
        self.sync()?;
        let mut times_ms = Vec::new();
        for _ in 0..self.spec.runs {
            let start = Instant::now();
            once()?;
            self.sync()?;
            times_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        self.device.memory_cleanup();
        once()?;
        self.sync()?;
        let peak_bytes = self.device.memory_pool_usage().map(|u| u.bytes_reserved);
        Ok(Measured {
            times_ms,
            peak_bytes,
        })
    }

    fn forward(&self, unet: &UNet3D) -> Result<Measured> {
        self.measure(|| {
            let eps = unet.forward(
                self.normal(self.latent_shape(1)),
                &[500.0],
                self.context(1),
                self.attention,
            )?;
            drop(eps);
            Ok(())
        })
    }

    /// One sampling step with classifier-free guidance (a batch of 2).
    fn sample(&self, unet: &UNet3D) -> Result<Measured> {
        self.measure(|| {
            let ddim = Ddim::new(&self.schedule, 1)?;
            let denoiser = Denoiser {
                unet,
                ddim: &ddim,
                options: self.attention,
            };
            let out = denoiser.sample(
                self.normal(self.latent_shape(1)),
                self.context(1),
                self.context(1),
                12.5,
                &mut silent,
            )?;
            drop(out);
            Ok(())
        })
    }

    /// One tuning step: forward, backward through the trainable layers, AdamW update.
    fn tune(&self, unet: &UNet3D) -> Result<Measured> {
        let [_, c, f, h, w] = self.latent_shape(1);
        let batch = TuneBatch {
            posterior: Posterior {
                mean: self.normal([f, c, h, w]),
                logvar: self.normal([f, c, h, w]).mul_scalar(0.1),
            },
            context: self.context(1),
            scaling_factor: 0.18215,
            attention: self.attention,
        };
        let mut tuner = Tuner::new(unet, TuneSettings::default());
        let mut model = Some(tuner.train_mode(unet.clone()));
        self.measure(|| {
            let draws = StepDraws {
                vae_eps: self.normal([f, c, h, w]),
                noise: self.normal(self.latent_shape(1)),
                timestep: 500,
            };
            let current = model.take().expect("the model is put back after each step");
            let (next, _) = tuner.step(current, &batch, draws, &self.schedule, false)?;
            model = Some(next);
            Ok(())
        })
    }
}

/// The arguments of `tav bench`.
#[derive(Args)]
pub struct BenchCommand {
    /// Model size: Stable Diffusion v1.5's UNet or the demo model's.
    #[arg(long, value_enum, default_value = "sd15")]
    pub config: plan::ModelSize,
    /// Frames of the video.
    #[arg(value_parser = crate::cli::frames, long, default_value_t = 8)]
    pub frames: usize,
    /// Width and height in pixels, a multiple of 64 [default: 512 for sd15, 64 for tiny].
    #[arg(value_parser = crate::cli::side, long)]
    pub size: Option<usize>,
    /// Frozen weights in f16 and f16 arithmetic (the tuning step in mixed precision, as
    /// `tav tune --f16` runs it).
    #[arg(long)]
    pub f16: bool,
    /// Attention: tav's WGSL kernels or the plain tensor-op path [default: kernels on a
    /// wgpu adapter, plain on flex].
    #[arg(long, value_enum)]
    pub attention: Option<gpu::AttentionChoice>,
    /// The old spelling: `on` is `--attention kernels`, `off` is `--attention plain`.
    #[arg(long, value_enum, default_value = "auto", conflicts_with = "attention")]
    pub kernels: KernelsFlag,
    /// Tuning: `on` keeps only each block's input for the backward pass and runs the
    /// block again there; `off` keeps every activation; `auto` recomputes when the step
    /// would otherwise be planned over 2 GiB.
    #[arg(long, value_enum, default_value = "auto")]
    pub recompute: gpu::RecomputeChoice,
    /// Timed runs per step, after one warm-up run (0: the peak memory of one run only).
    #[arg(value_parser = crate::cli::count, long, default_value_t = 5)]
    pub runs: usize,
    /// Which steps to time (comma-separated): forward, tune, sample.
    #[arg(
        long,
        value_enum,
        default_value = "forward,tune,sample",
        value_delimiter = ','
    )]
    pub steps: Vec<bench::BenchStep>,
    /// Time one kernel family alone instead of the UNet's steps: `attention` (tav's
    /// sparse-causal and temporal attention kernels, forward and backward separately, at
    /// --tokens, --frames, --heads, --head-dim; --config and --size are not used).
    #[arg(long, value_enum)]
    pub kernel: Option<bench::KernelFamily>,
    /// Tokens per frame for `--kernel attention` (SD's finest level at 512²: 4096).
    #[arg(value_parser = crate::cli::count, long, default_value_t = 4096)]
    pub tokens: usize,
    /// Attention heads for `--kernel attention`.
    #[arg(value_parser = crate::cli::count, long, default_value_t = 8)]
    pub heads: usize,
    /// Size of one head for `--kernel attention` (SD v1.5: 40, 80, 160).
    #[arg(value_parser = crate::cli::count, long, default_value_t = 40)]
    pub head_dim: usize,
    /// Attention kernels for `--kernel attention`: `tiled` (what tav runs) or `rows` (the
    /// per-row kernels they replaced, for the ratio between them).
    #[arg(long, value_enum, default_value = "tiled")]
    pub tiling: TilingChoice,
    /// Subgroups for `--kernel attention`: `auto` (as tav runs: the tiled kernels split
    /// large heads over several invocations on GPUs with subgroups), `on` (wherever the
    /// device has subgroups, CPU adapters too) or `off` (one invocation per row).
    #[arg(long, value_enum, default_value = "auto")]
    pub subgroups: SubgroupChoice,
    /// Which attention `--kernel attention` times: sparse-causal, temporal or both.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: ModeChoice,
    /// Device: auto (wgpu's default adapter), discrete[:N], integrated[:N], virtual[:N],
    /// cpu (a wgpu CPU adapter such as lavapipe) or flex (burn's CPU backend; no WGSL
    /// kernels; several times faster than lavapipe on a machine without a GPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print what the adapter is (name, driver, backend, `shader-f16`, subgroup sizes,
    /// limits) as one JSON line, and time nothing.
    #[arg(long)]
    pub probe: bool,
    /// Write the benchmarked model (`--config`) with its random weights as a diffusers
    /// folder here (f16 files with `--f16`), for whole `tav run`s at that size, and time
    /// nothing.
    #[arg(long, value_name = "DIR")]
    pub write_model: Option<std::path::PathBuf>,
}

/// Runs `tav bench`.
pub fn command(args: BenchCommand) -> Result<()> {
    let BenchCommand {
        config,
        frames,
        size,
        f16,
        attention,
        kernels,
        recompute,
        runs,
        steps,
        kernel,
        tokens,
        heads,
        head_dim,
        tiling,
        subgroups,
        mode,
        device,
        probe,
        write_model,
    } = args;
    if let Some(dir) = write_model {
        let started = Instant::now();
        let configs = match config {
            plan::ModelSize::Tiny => crate::demo::RandomModelConfigs::tiny(),
            plan::ModelSize::Sd15 => crate::demo::RandomModelConfigs::sd_v1_5(),
        };
        let dtype = if f16 { Dtype::F16 } else { Dtype::F32 };
        crate::demo::write_random_model(&dir, &configs, 0, dtype, "tav-bench-random")?;
        let line = serde_json::json!({
            "bench": "write-model", "config": config_name(config), "dir": dir,
            "dtype": if f16 { "f16" } else { "f32" }, "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{line}");
        return Ok(());
    }
    let gpu::Opened {
        device,
        description: adapter,
        limits,
        subgroup_size,
        probe: adapter_probe,
    } = gpu::open(&device).map_err(TavError::Device)?;
    if probe {
        println!(
            "{}",
            serde_json::json!({"bench": "probe", "adapter": adapter_probe})
        );
        return Ok(());
    }
    if kernel.is_some() {
        let spec = bench::KernelBenchSpec {
            tokens,
            frames,
            heads,
            head_dim,
            f16,
            runs,
            tiling: match tiling {
                TilingChoice::Rows => tav_core::kernels::Tiling::PerRow,
                TilingChoice::Tiled => tav_core::kernels::Tiling::Tiled,
            },
            subgroups: match subgroups {
                SubgroupChoice::Auto => bench::Subgroups::AsTavRuns,
                SubgroupChoice::On => bench::Subgroups::Split(subgroup_size),
                SubgroupChoice::Off => bench::Subgroups::Split(None),
            },
            modes: match mode {
                ModeChoice::SparseCausal => vec![false],
                ModeChoice::Temporal => vec![true],
                ModeChoice::Both => vec![false, true],
            },
        };
        return bench::run_attention_kernels(&spec, device, &adapter);
    }
    let choice = match kernels {
        KernelsFlag::On => Some(gpu::AttentionChoice::Kernels),
        KernelsFlag::Off => Some(gpu::AttentionChoice::Plain),
        KernelsFlag::Auto => attention,
    };
    let kernels =
        gpu::AttentionChoice::resolve(choice, false, &device).map_err(TavError::InvalidInput)?;
    let size = size.unwrap_or(match config {
        plan::ModelSize::Tiny => 64,
        plan::ModelSize::Sd15 => 512,
    });
    let spec = bench::BenchSpec {
        config,
        frames,
        size,
        f16,
        kernels,
        recompute,
        runs,
        steps,
    };
    bench::run(&spec, device, &adapter, &limits)
}

/// `tav bench --kernels`, the old spelling of `--attention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelsFlag {
    /// `--attention kernels`.
    On,
    /// `--attention plain`.
    Off,
    /// As `--attention` (or its default) says.
    Auto,
}

/// `tav bench --tiling`: which attention kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TilingChoice {
    /// The tiled kernels, what tav runs.
    Tiled,
    /// The per-row kernels they replaced.
    Rows,
}

/// `tav bench --mode`: which attention `--kernel attention` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    SparseCausal,
    Temporal,
    Both,
}

/// `tav bench --subgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubgroupChoice {
    /// As tav runs: large heads split over a subgroup's invocations on GPUs with subgroups.
    Auto,
    /// Split wherever the device has subgroups, CPU adapters too (to measure them there).
    On,
    /// One invocation per row, as without subgroups.
    Off,
}

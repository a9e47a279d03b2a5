//! `tav`: Tune-A-Video on any GPU. Tune on a clip, invert it, edit it with new prompts.

mod atomic;
mod bench;
mod demo;
mod gpu;
mod job;
mod jobfile;
mod models;
mod pack;
mod plan;
mod plot;
mod pretrain;
mod sample;
mod score;
mod toy;
mod ui;
mod video;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use clap::{Args, Parser, Subcommand};
use tav_core::checkpoint::LoadOptions;
use tav_core::edit::Guidance;
use tav_core::transformer::VideoAttentionOptions;
use tav_core::{Result, TavError};

use crate::job::Session;
use crate::ui::{Mode, Ui};

#[derive(Parser)]
#[command(
    name = "tav",
    version,
    about = "Tune-A-Video on WebGPU: one-shot video editing with Stable Diffusion v1.x",
    long_about = "Tune-A-Video on WebGPU: tune a Stable Diffusion v1.x model on one clip, DDIM-invert \
                  the clip, and sample edited videos for new prompts.\n\nStart with \
                  `tav run jobs/demo.toml` (no download), then `tav run jobs/car-turn.toml --model PATH/TO/stable-diffusion-v1-5`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// The Stable Diffusion v1.x model: a diffusers folder, a single-file checkpoint
    /// (`.safetensors` in the original CompVis/A1111 layout, as fine-tunes are shipped), or
    /// `demo` for the built-in random demo model.
    #[arg(long, default_value = "demo")]
    model: PathBuf,
    /// Weights variant to read, e.g. `fp16` for `*.fp16.safetensors` (default: plain files,
    /// or fp16 if only those exist).
    #[arg(long)]
    variant: Option<String>,
    /// A LoRA to merge into the model's frozen weights, `FILE[:SCALE]` (scale 1 if omitted;
    /// kohya/A1111 or diffusers/PEFT format); repeat for several.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<models::LoraSpec>,
    /// For a single-file checkpoint: a diffusers folder whose configs (and tokenizer) to use
    /// instead of inferring them from the tensors' shapes with SD v1.x's head counts,
    /// scheduler and tokenizer.
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Half precision: weights stored in f16 (half the memory), f16 arithmetic (norm
    /// statistics, softmax and convolution sums in f32). Tuning in mixed precision, as the
    /// reference's autocast: f16 activations and arithmetic, f32 tuned layers and AdamW
    /// state, the loss scaled for backward. Needs an adapter with f16 support.
    #[arg(long)]
    f16: bool,
    /// How sparse-causal and temporal attention run: `kernels`, tav's memory-efficient WGSL
    /// kernels (no score matrix in memory; the default wherever WGSL runs), or `plain`, the
    /// tensor-op reference path (the only one on --device flex) [default: kernels on a wgpu
    /// adapter, plain on flex].
    #[arg(long, value_enum)]
    attention: Option<gpu::AttentionChoice>,
    /// The old spelling of `--attention kernels` (kept so old scripts still run).
    #[arg(long, conflicts_with = "attention")]
    kernels: bool,
    /// Tuning: `on` keeps only each block's input for the backward pass and runs the block
    /// again there (a fraction of the memory, about a third more compute); `off` keeps every
    /// activation; `auto` recomputes when the step would otherwise be planned over 2 GiB.
    #[arg(long, value_enum, default_value = "auto")]
    recompute: gpu::RecomputeChoice,
    /// Device: auto (wgpu's default adapter), discrete[:N], integrated[:N], virtual[:N],
    /// cpu (a wgpu CPU adapter such as lavapipe) or flex (burn's CPU backend; no WGSL
    /// kernels; several times faster than lavapipe on a machine without a GPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// No progress bars or messages (errors still go to stderr).
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
    /// Machine-readable JSON lines on stdout instead of progress bars.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct ClipArgs {
    /// The input clip: .mp4 (H.264), .gif, or a folder of PNG/JPEG frames; `demo` for the
    /// built-in procedural clip.
    #[arg(long)]
    video: Option<PathBuf>,
    /// Number of frames to sample [default: 24, or the tuned weights' value].
    #[arg(long)]
    frames: Option<usize>,
    /// First frame [default: 0].
    #[arg(long)]
    start: Option<usize>,
    /// Take every Nth frame [default: 2].
    #[arg(long)]
    stride: Option<usize>,
    /// Width in pixels, a multiple of 64 [default: 512].
    #[arg(long)]
    width: Option<usize>,
    /// Height in pixels, a multiple of 64 [default: 512].
    #[arg(long)]
    height: Option<usize>,
    /// Stretch to the size instead of centre-cropping to its aspect ratio.
    #[arg(long)]
    no_crop: bool,
}

#[derive(Args, Clone)]
struct TuneArgs {
    /// Tuning steps [default: 500].
    #[arg(long)]
    steps: Option<usize>,
    /// Learning rate (AdamW, constant) [default: 3e-5].
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of every random draw [default: 33].
    #[arg(long)]
    seed: Option<u64>,
    /// Save a resumable checkpoint every N steps [default: 100].
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Ignore an existing checkpoint in the output folder instead of resuming from it.
    #[arg(long)]
    restart: bool,
}

#[derive(Args, Clone, Default)]
struct EditArgs {
    /// DDIM inversion steps [default: 50].
    #[arg(long)]
    inversion_steps: Option<usize>,
    /// DDIM sampling steps per edit [default: 50].
    #[arg(long)]
    inference_steps: Option<usize>,
    /// Classifier-free guidance scale [default: 12.5].
    #[arg(long)]
    guidance: Option<f64>,
    /// Rescale the guided prediction toward the conditional one's standard deviation, 0–1
    /// (0.5–0.7 keeps strong guidance from washing frames out) [default: 0, the reference].
    #[arg(long)]
    guidance_rescale: Option<f64>,
    /// Also write every edited frame as PNG.
    #[arg(long)]
    png: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Tune the model on a clip and its prompt; writes tuned.safetensors (+ checkpoint, loss.png).
    Tune {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        clip: ClipArgs,
        #[command(flatten)]
        tune: TuneArgs,
        /// The prompt that describes the clip, e.g. "a man is skiing".
        #[arg(long)]
        prompt: String,
    },
    /// Invert the clip with tuned weights and sample one edited video per prompt.
    Edit {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        clip: ClipArgs,
        #[command(flatten)]
        edit: EditArgs,
        /// Tuned weights from `tav tune` (the clip defaults to the one they were tuned on).
        #[arg(long)]
        tuned: PathBuf,
        /// An edit prompt; repeat for several edits.
        #[arg(long = "prompt", required = true)]
        prompts: Vec<String>,
    },
    /// The whole job from a job file (tune, invert, edit), e.g. jobs/car-turn.toml.
    /// Flags override the file.
    Run {
        /// The job file (TOML).
        job: PathBuf,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        clip: ClipArgs,
        #[command(flatten)]
        tune: TuneArgs,
        #[command(flatten)]
        edit: EditArgs,
    },
    /// Load a checkpoint folder and run every component once on random input, printing
    /// what was loaded and checked.
    Check {
        #[command(flatten)]
        common: Common,
        /// Frames of the random test video.
        #[arg(long, default_value_t = 4)]
        frames: usize,
        /// Width and height of the random test video, in pixels (a multiple of 64).
        #[arg(long, default_value_t = 128)]
        size: usize,
    },
    /// Convert a model (diffusers folder or single-file checkpoint, LoRAs merged) into the layout the browser loads: f16 weights in shards
    /// under WebGPU's binding limits, a manifest with configs and SHA-256s, the tokenizer.
    PackWeb {
        /// The Stable Diffusion v1.x model: a diffusers folder or a single-file checkpoint.
        model: PathBuf,
        /// The output folder (serve it over HTTP; the web engine loads its manifest.json).
        out: PathBuf,
        /// Weights variant to read, e.g. `fp16`.
        #[arg(long)]
        variant: Option<String>,
        /// Largest shard in MiB (a larger single tensor gets a shard of its own).
        #[arg(long, default_value_t = 64)]
        shard_mib: u64,
        /// Temporal layer weights to ship with the UNet (safetensors keyed by module path);
        /// without it the browser initialises them as the reference does.
        #[arg(long)]
        temporal: Option<PathBuf>,
        /// A LoRA merged into the packed weights, `FILE[:SCALE]`; repeat for several.
        #[arg(long = "lora", value_name = "FILE[:SCALE]")]
        loras: Vec<models::LoraSpec>,
        /// For a single-file checkpoint: a diffusers folder whose configs (and tokenizer) to
        /// use instead of inferring them.
        #[arg(long)]
        model_config: Option<PathBuf>,
    },
    /// Train the toy world's model from a seed (VAE, then text encoder and UNet) on generated
    /// frames and write it as a diffusers folder in f16, loadable with --model.
    Pretrain {
        #[command(flatten)]
        spec: pretrain::PretrainSpec,
        /// Device: auto (wgpu's default adapter), discrete[:N], integrated[:N], virtual[:N],
        /// cpu (a wgpu CPU adapter such as lavapipe) or flex (burn's CPU backend; no WGSL
        /// kernels; several times faster than lavapipe on a machine without a GPU).
        #[arg(long, default_value = "auto")]
        device: String,
        /// No progress bars or messages.
        #[arg(long)]
        quiet: bool,
        /// Progress as JSON lines on stdout (one per step, with its loss) instead of bars.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
    },
    /// Text-to-video without a source clip: sample each prompt from the same seeded noise
    /// (DDIM, classifier-free guidance) with the inflated model, or with tuned weights.
    /// Writes NN-prompt.gif per prompt and grid.gif to --out (default outputs/sample).
    Sample {
        #[command(flatten)]
        common: Common,
        /// A prompt; repeat for several videos.
        #[arg(long = "prompt", required = true)]
        prompts: Vec<String>,
        /// Tuned weights from `tav tune` to sample with instead of the base model.
        #[arg(long)]
        tuned: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Width and height in pixels, a multiple of 64 [default: the model's trained size,
        /// 512 for SD v1.x, 64 for the toy model].
        #[arg(long)]
        size: Option<usize>,
        /// DDIM sampling steps.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Classifier-free guidance scale.
        #[arg(long, default_value_t = 7.5)]
        guidance: f64,
        /// Rescale of the guided prediction toward the conditional one's scale, 0–1.
        #[arg(long, default_value_t = 0.0)]
        guidance_rescale: f64,
        /// Seed of the initial noise (shared by every prompt).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Score one-shot edits of held-out toy-world clips (colour, background and shape
    /// changes) from their pixels: attribute success, motion kept (mask IoU, centroid path),
    /// frame-to-frame change and colour drift, for the full method and its ablations with the
    /// same seeds.
    /// Prints a table; `--out DIR` also writes DIR/score.json and DIR/videos/ (each clip
    /// beside its edits, per method).
    Score {
        #[command(flatten)]
        common: Common,
        /// Held-out clips (seeds `--seed`, `--seed`+1, …); three edits each.
        #[arg(long, default_value_t = 8)]
        clips: usize,
        #[arg(long, default_value_t = 1000)]
        seed: u64,
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Width and height in pixels (a multiple of 64).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Camera pan: the clips' backgrounds slide left by this share of the frame over the
        /// clip (0: a still camera), so frames differ in every pixel.
        #[arg(long, default_value_t = 0.0)]
        pan: f32,
        #[arg(long, default_value_t = 300)]
        tune_steps: usize,
        #[arg(long, default_value_t = 3e-4)]
        learning_rate: f64,
        #[arg(long, default_value_t = 25)]
        inversion_steps: usize,
        #[arg(long, default_value_t = 25)]
        steps: usize,
        /// Classifier-free guidance (4 with a rescale of 0.7 scored best on an earlier toy
        /// model, stage 3: 0.58 against 0.42 at guidance 2 without rescale, same 24 edits).
        #[arg(long, default_value_t = 4.0)]
        guidance: f64,
        /// Rescale of the guided prediction toward the conditional one's scale, 0–1.
        #[arg(long, default_value_t = 0.7)]
        guidance_rescale: f64,
        /// Methods, comma-separated: full, no-tuning, no-temporal, per-frame-attention, and
        /// text-to-video (not an edit: the base model samples the edit prompts from noise,
        /// what the model draws for a prompt without a source clip).
        #[arg(
            long,
            value_enum,
            default_value = "full,no-tuning,no-temporal,per-frame-attention",
            value_delimiter = ','
        )]
        methods: Vec<score::Method>,
    },
    /// Draw a toy-world clip (a coloured shape moving over a textured background) from a
    /// seed and write it as a video; prints its caption. Unnamed attributes come from the seed.
    ToyClip {
        /// Where to write it: `.gif`, `.mp4`, or a folder of PNG frames.
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Width and height in pixels (a multiple of 64).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// circle, square or triangle.
        #[arg(long)]
        shape: Option<String>,
        /// red, orange, yellow, blue, purple or pink.
        #[arg(long)]
        colour: Option<String>,
        /// road, beach, snow or grass.
        #[arg(long)]
        background: Option<String>,
        /// left-to-right, right-to-left, top-to-bottom, diagonal, arc or bounce.
        #[arg(long)]
        path: Option<String>,
        /// Camera pan: the background slides left by this share of the frame over the clip.
        #[arg(long, default_value_t = 0.0)]
        pan: f32,
    },
    /// The memory plan of a job before anything is allocated: peak device memory, largest
    /// single buffer and what dominates, for a UNet forward, a tuning step, an inversion
    /// step and a guided sampling step. `tav tune/edit/run` check the same plan first.
    Plan {
        /// A model size: sd15 (Stable Diffusion v1.5) or tiny (the demo model).
        #[arg(long, value_enum, conflicts_with = "model")]
        config: Option<plan::ModelSize>,
        /// A checkpoint folder (diffusers layout) or single-file checkpoint: its configs are
        /// read (or inferred from its shapes), not its weights.
        #[arg(long)]
        model: Option<PathBuf>,
        /// A diffusers folder whose configs to plan with (for a single file whose shapes
        /// cannot tell them).
        #[arg(long, conflicts_with = "config")]
        model_config: Option<PathBuf>,
        #[arg(long, default_value_t = 24)]
        frames: usize,
        /// Width in pixels, a multiple of 64.
        #[arg(long, default_value_t = 512)]
        width: usize,
        /// Height in pixels, a multiple of 64.
        #[arg(long, default_value_t = 512)]
        height: usize,
        /// Weights and inference in f16; tuning in mixed precision (blocks' inputs kept in f16).
        #[arg(long)]
        f16: bool,
        /// Attention: kernels (the default) or plain.
        #[arg(long, value_enum, default_value = "kernels")]
        attention: gpu::AttentionChoice,
        /// Tuning: `on` keeps only each block's input for the backward pass and runs the
        /// block again there; `off` keeps every activation; `auto` recomputes when the step
        /// would otherwise be planned over 2 GiB.
        #[arg(long, value_enum, default_value = "auto")]
        recompute: gpu::RecomputeChoice,
        /// The device's largest buffer in MiB, which sizes the chunked work (2048: NVIDIA
        /// and AMD Vulkan drivers; lavapipe and WebGPU's default: 128).
        #[arg(long, default_value_t = 2048)]
        max_buffer_mib: u64,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Time a UNet forward, a tuning step and a guided sampling step on random weights;
    /// prints the median time, FLOP count and rate, and peak GPU memory of each as JSON lines
    /// (or, with `--kernel attention`, the attention kernels alone).
    Bench {
        /// Model size: Stable Diffusion v1.5's UNet or the demo model's.
        #[arg(long, value_enum, default_value = "sd15")]
        config: plan::ModelSize,
        /// Frames of the video.
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Width and height in pixels, a multiple of 64 [default: 512 for sd15, 64 for tiny].
        #[arg(long)]
        size: Option<usize>,
        /// Frozen weights in f16 and f16 arithmetic (the tuning step in mixed precision, as
        /// `tav tune --f16` runs it).
        #[arg(long)]
        f16: bool,
        /// Attention: tav's WGSL kernels or the plain tensor-op path [default: kernels on a
        /// wgpu adapter, plain on flex].
        #[arg(long, value_enum)]
        attention: Option<gpu::AttentionChoice>,
        /// The old spelling: `on` is `--attention kernels`, `off` is `--attention plain`.
        #[arg(long, value_enum, default_value = "auto", conflicts_with = "attention")]
        kernels: KernelsFlag,
        /// Tuning: `on` keeps only each block's input for the backward pass and runs the
        /// block again there; `off` keeps every activation; `auto` recomputes when the step
        /// would otherwise be planned over 2 GiB.
        #[arg(long, value_enum, default_value = "auto")]
        recompute: gpu::RecomputeChoice,
        /// Timed runs per step, after one warm-up run (0: the peak memory of one run only).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Which steps to time (comma-separated): forward, tune, sample.
        #[arg(
            long,
            value_enum,
            default_value = "forward,tune,sample",
            value_delimiter = ','
        )]
        steps: Vec<bench::BenchStep>,
        /// Time one kernel family alone instead of the UNet's steps: `attention` (tav's
        /// sparse-causal and temporal attention kernels, forward and backward separately, at
        /// --tokens, --frames, --heads, --head-dim; --config and --size are not used).
        #[arg(long, value_enum)]
        kernel: Option<bench::KernelFamily>,
        /// Tokens per frame for `--kernel attention` (SD's finest level at 512²: 4096).
        #[arg(long, default_value_t = 4096)]
        tokens: usize,
        /// Attention heads for `--kernel attention`.
        #[arg(long, default_value_t = 8)]
        heads: usize,
        /// Size of one head for `--kernel attention` (SD v1.5: 40, 80, 160).
        #[arg(long, default_value_t = 40)]
        head_dim: usize,
        /// Sparse-causal kernels for `--kernel attention`: `tiled` (what tav runs) or `rows`
        /// (the per-row kernels they replaced, for the ratio between them).
        #[arg(long, value_enum, default_value = "tiled")]
        tiling: TilingChoice,
        /// Subgroups for `--kernel attention`: `auto` (the tiled kernels split large heads
        /// over several invocations where the device has subgroups) or `off` (one invocation
        /// per row, as on devices without them).
        #[arg(long, value_enum, default_value = "auto")]
        subgroups: SubgroupChoice,
        /// Device: auto (wgpu's default adapter), discrete[:N], integrated[:N], virtual[:N],
        /// cpu (a wgpu CPU adapter such as lavapipe) or flex (burn's CPU backend; no WGSL
        /// kernels; several times faster than lavapipe on a machine without a GPU).
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

/// `tav bench --kernels`, the old spelling of `--attention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KernelsFlag {
    /// `--attention kernels`.
    On,
    /// `--attention plain`.
    Off,
    /// As `--attention` (or its default) says.
    Auto,
}

/// `tav bench --tiling`: which sparse-causal attention kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TilingChoice {
    /// The tiled kernels, what tav runs.
    Tiled,
    /// The per-row kernels they replaced.
    Rows,
}

/// `tav bench --subgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SubgroupChoice {
    /// Split large heads over a subgroup's invocations where the device has subgroups.
    Auto,
    /// One invocation per row, as without subgroups.
    Off,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_catching_oom(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(TavError::Device(message)) => {
            eprintln!("error: {}", gpu_failure(&message));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; a panic inside the GPU stack (e.g. an allocation that failed) becomes
/// an error that says what to reduce.
fn run_catching_oom(cli: Cli) -> Result<()> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli)));
    std::panic::set_hook(default_hook);
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            Err(TavError::Device(message))
        }
    }
}

/// A failure inside the GPU stack as an error a user can act on: allocation failures say
/// what to reduce.
fn gpu_failure(message: &str) -> TavError {
    let lower = message.to_lowercase();
    if lower.contains("memory") || lower.contains("allocate") || lower.contains("out of") {
        TavError::Device(format!(
            "out of GPU memory: reduce --frames or --width/--height (or close other GPU programs). \
             Details: {}",
            message
                .lines()
                .find(|l| l.contains("allocate"))
                .unwrap_or(message)
                .trim()
        ))
    } else {
        TavError::Device(format!("the GPU stack failed: {message}"))
    }
}

fn ui_for(common: &Common) -> Ui {
    Ui::new(if common.quiet {
        Mode::Quiet
    } else if common.json {
        Mode::Json
    } else {
        Mode::Bars
    })
}

/// The model the common flags name.
fn model_choice(common: &Common) -> models::ModelChoice {
    models::ModelChoice {
        path: common.model.clone(),
        variant: common.variant.clone(),
        model_config: common.model_config.clone(),
        loras: common.loras.clone(),
    }
}

fn open_session(common: &Common, ui: &mut Ui) -> Result<Session> {
    let opened = gpu::open(&common.device).map_err(TavError::Device)?;
    let kernels = gpu::AttentionChoice::resolve(common.attention, common.kernels, &opened.device)
        .map_err(TavError::InvalidInput)?;
    let adapter = &opened.description;
    ui.say(&format!("GPU adapter: {adapter}"));
    ui.record(serde_json::json!({"event": "adapter", "adapter": adapter,
        "max_buffer_bytes": opened.limits.max_buffer_bytes, "kernels": kernels}));
    let mut session = Session::load(&model_choice(common), common.f16, opened.device, ui)?;
    session.limits = opened.limits;
    session.attention.kernels = kernels;
    session.recompute = common.recompute;
    session.attention.max_buffer_bytes = opened.limits.max_buffer_bytes;
    Ok(session)
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tune {
            common,
            clip,
            tune,
            prompt,
        } => {
            let spec = jobfile::Job::from_flags(&common, &clip, &tune, prompt)?;
            run_job(&common, &spec, false)
        }
        Command::Edit {
            common,
            clip,
            edit,
            tuned,
            prompts,
        } => edit_only(&common, &clip, &edit, &tuned, prompts),
        Command::Run {
            job,
            common,
            clip,
            tune,
            edit,
        } => {
            let spec = jobfile::Job::from_file(&job)?.with_overrides(&common, &clip, &tune, &edit);
            run_job(&common, &spec, true)
        }
        Command::Sample {
            common,
            prompts,
            tuned,
            frames,
            size,
            steps,
            guidance,
            guidance_rescale,
            seed,
        } => {
            let spec = sample::SampleSpec {
                prompts,
                frames,
                size,
                steps,
                guidance: Guidance {
                    scale: guidance,
                    rescale: guidance_rescale,
                },
                seed,
                fps: video::DEFAULT_FPS,
            };
            sample_videos(&common, &spec, tuned.as_deref())
        }
        Command::Check {
            common,
            frames,
            size,
        } => check(&common, frames, size),
        Command::PackWeb {
            model,
            out,
            variant,
            shard_mib,
            temporal,
            loras,
            model_config,
        } => {
            let manifest = pack::pack_web(&pack::PackSpec {
                model: &model,
                out: &out,
                variant: variant.as_deref(),
                shard_bytes: shard_mib.max(1) << 20,
                temporal: temporal.as_deref(),
                model_config: model_config.as_deref(),
                loras: &loras,
            })?;
            println!(
                "packed {} into {}: {} shards, {:.1} MB in f16",
                model.display(),
                out.display(),
                manifest.shards.len(),
                manifest.total_bytes() as f64 / 1e6
            );
            Ok(())
        }
        Command::Pretrain {
            spec,
            device,
            quiet,
            json,
        } => {
            let gpu::Opened {
                device,
                description: adapter,
                ..
            } = gpu::open(&device).map_err(TavError::Device)?;
            let mut ui = Ui::new(if quiet {
                Mode::Quiet
            } else if json {
                Mode::Json
            } else {
                Mode::Bars
            });
            ui.say(&format!("GPU adapter: {adapter}"));
            let started = std::time::Instant::now();
            let report = pretrain::run(&spec, &device, &mut ui)?;
            ui.say(&format!(
                "wrote {} in {:.1} min ({} parameters)",
                spec.out.display(),
                started.elapsed().as_secs_f64() / 60.0,
                report.parameters.values().sum::<usize>()
            ));
            Ok(())
        }
        Command::Score {
            common,
            clips,
            seed,
            frames,
            size,
            pan,
            tune_steps,
            learning_rate,
            inversion_steps,
            steps,
            guidance,
            guidance_rescale,
            methods,
        } => {
            let spec = score::ScoreSpec {
                clips,
                seed,
                frames,
                size,
                pan,
                tune_steps,
                learning_rate,
                inversion_steps,
                steps,
                guidance: Guidance {
                    scale: guidance,
                    rescale: guidance_rescale,
                },
                methods,
                out: common.out.clone(),
            };
            spec.validate()?;
            let mut ui = ui_for(&common);
            let session = open_session(&common, &mut ui)?;
            let scores = score::run(&session, &spec, &mut ui)?;
            print!("{}", score::table(&score::summary(&scores)));
            Ok(())
        }
        Command::ToyClip {
            out,
            seed,
            frames,
            size,
            shape,
            colour,
            background,
            path,
            pan,
        } => {
            let choices = toy::Choices {
                shape,
                colour,
                background,
                path,
                pan,
            };
            let spec = toy::spec(seed, frames, size, &choices)?;
            toy::write(&spec, &out)?;
            println!("{}", spec.caption());
            eprintln!(
                "wrote {} ({} frames of {size}×{size}, path {})",
                out.display(),
                frames,
                spec.path.name()
            );
            Ok(())
        }
        Command::Plan {
            config,
            model,
            model_config,
            frames,
            width,
            height,
            f16,
            attention,
            recompute,
            max_buffer_mib,
            json,
        } => {
            let configs = plan::configs(config, model_config.as_ref().or(model.as_ref()))?;
            let limits = tav_core::limits::DeviceLimits {
                max_buffer_bytes: max_buffer_mib << 20,
                memory_bytes: None,
            };
            let keeping_everything = tav_core::plan::JobShape {
                frames,
                height,
                width,
                f16,
                kernels: attention == gpu::AttentionChoice::Kernels,
                recompute: false,
            };
            let job = tav_core::plan::JobShape {
                recompute: resolve_recompute(
                    recompute,
                    &plan::plan_for(&configs, keeping_everything, &limits)?,
                ),
                ..keeping_everything
            };
            let plans = plan::plan_for(&configs, job, &limits)?;
            plan::print(&plans, &job, &limits, json);
            Ok(())
        }
        Command::Bench {
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
            device,
        } => {
            let gpu::Opened {
                device,
                description: adapter,
                limits,
            } = gpu::open(&device).map_err(TavError::Device)?;
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
                    subgroups: subgroups == SubgroupChoice::Auto,
                };
                return bench::run_attention_kernels(&spec, device, &adapter);
            }
            let choice = match kernels {
                KernelsFlag::On => Some(gpu::AttentionChoice::Kernels),
                KernelsFlag::Off => Some(gpu::AttentionChoice::Plain),
                KernelsFlag::Auto => attention,
            };
            let kernels = gpu::AttentionChoice::resolve(choice, false, &device)
                .map_err(TavError::InvalidInput)?;
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
    }
}

/// Whether tuning recomputes blocks: as asked, or (`auto`) when the plan that keeps every
/// activation puts the tuning step over [`tav_core::plan::RECOMPUTE_ABOVE_BYTES`].
pub fn resolve_recompute(
    choice: gpu::RecomputeChoice,
    plans_keeping_everything: &[tav_core::plan::StepPlan],
) -> bool {
    match choice {
        gpu::RecomputeChoice::On => true,
        gpu::RecomputeChoice::Off => false,
        gpu::RecomputeChoice::Auto => tav_core::plan::recompute_needed(plans_keeping_everything),
    }
}

/// Tunes, then (with `edit`) inverts and edits. Nothing is written until the model, the
/// plan and the clip are accepted: a refused input leaves no output folder behind.
fn run_job(common: &Common, spec: &jobfile::Job, edit: bool) -> Result<()> {
    let mut ui = ui_for(common);
    let out = spec.out.clone();
    spec.clip.validate()?;
    let mut session_common = common.clone();
    session_common.model = spec.model.clone();
    session_common.model_config = spec.model_config.clone();
    session_common.loras = spec.loras.clone();
    let mut session = open_session(&session_common, &mut ui)?;
    let steps: &[&str] = if edit {
        &["tuning", "inversion", "sampling"]
    } else {
        &["tuning"]
    };
    session.check_plan(spec.clip.frames, spec.clip.height, spec.clip.width, steps)?;
    session.check_fits(spec.clip.frames, spec.clip.height, spec.clip.width)?;
    let started = Instant::now();
    // The clip is read and encoded once; tuning and editing share its posterior.
    let clip = spec.clip.read()?;
    create_output_folder(&out, &mut ui)?;
    let posterior = session.encode(&clip, &mut ui)?;
    let unet = job::tune(
        &session,
        &spec.clip,
        posterior.clone(),
        &spec.tune,
        &out,
        &mut ui,
    )?;
    ui.say(&format!(
        "tuned in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    if edit {
        job::edit(&session, &unet, &clip, posterior, &spec.edit, &out, &mut ui)?;
        ui.finish();
        ui.say(&format!(
            "done in {:.0} s: {} edited videos and a grid in {}",
            started.elapsed().as_secs_f64(),
            spec.edit.prompts.len(),
            out.display()
        ));
    }
    ui.finish();
    Ok(())
}

/// The output folder and its `log.jsonl` (which also gets what was said before it existed).
fn create_output_folder(out: &std::path::Path, ui: &mut Ui) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| TavError::Io {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let _ = ui.log_to(&out.join("log.jsonl"));
    Ok(())
}

fn edit_only(
    common: &Common,
    clip_args: &ClipArgs,
    edit: &EditArgs,
    tuned: &std::path::Path,
    prompts: Vec<String>,
) -> Result<()> {
    let mut ui = ui_for(common);
    let mut session = open_session(common, &mut ui)?;
    let (unet, meta) = job::load_tuned(&session, tuned, &mut ui)?;
    let spec = jobfile::Job::for_edit(common, clip_args, edit, &meta, prompts, tuned)?;
    session.check_fits(spec.clip.frames, spec.clip.height, spec.clip.width)?;
    session.check_plan(
        spec.clip.frames,
        spec.clip.height,
        spec.clip.width,
        &["inversion", "sampling"],
    )?;
    let clip = spec.clip.read()?;
    create_output_folder(&spec.out, &mut ui)?;
    let posterior = session.encode(&clip, &mut ui)?;
    let written = job::edit(
        &session, &unet, &clip, posterior, &spec.edit, &spec.out, &mut ui,
    )?;
    ui.finish();
    ui.say(&format!(
        "wrote {} files to {}",
        written.len(),
        spec.out.display()
    ));
    Ok(())
}

fn sample_videos(
    common: &Common,
    spec: &sample::SampleSpec,
    tuned: Option<&std::path::Path>,
) -> Result<()> {
    let mut ui = ui_for(common);
    let session = open_session(common, &mut ui)?;
    let unet = match tuned {
        Some(path) => job::load_tuned(&session, path, &mut ui)?.0,
        None => session.models.unet.clone(),
    };
    let clips = sample::videos(&session, &unet, spec, &mut ui)?;
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("outputs/sample"));
    let written = sample::write(&out, &spec.prompts, &clips, &mut ui)?;
    ui.finish();
    ui.say(&format!(
        "wrote {} files to {}",
        written.len(),
        out.display()
    ));
    Ok(())
}

fn check(common: &Common, frames: usize, size: usize) -> Result<()> {
    if size == 0 || !size.is_multiple_of(64) {
        return Err(TavError::InvalidInput(format!(
            "--size {size} is not a positive multiple of 64"
        )));
    }
    if frames == 0 {
        return Err(TavError::InvalidInput("--frames must be at least 1".into()));
    }
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
fn report(name: &str, t: &Tensor<1>) -> Result<()> {
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

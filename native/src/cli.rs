//! The `tav` command line: the top-level parser, the subcommands and the flags they share.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{commands, gpu, models};

#[derive(Parser)]
#[command(
    name = "tav",
    version,
    about = "Tune-A-Video on WebGPU: one-shot video editing with Stable Diffusion v1.x",
    long_about = "Tune-A-Video on WebGPU: tune a Stable Diffusion v1.x model on one clip, DDIM-invert \
                  the clip, and sample edited videos for new prompts.\n\nStart with \
                  `tav run jobs/demo.toml` (no download), then `tav run jobs/car-turn.toml --model PATH/TO/stable-diffusion-v1-5`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Common {
    /// The Stable Diffusion v1.x model: a diffusers folder, a single-file checkpoint
    /// (`.safetensors` in the original CompVis/A1111 layout, as fine-tunes are shipped), or
    /// `demo` for the built-in random demo model.
    #[arg(long, default_value = "demo")]
    pub model: PathBuf,
    /// Weights variant to read, e.g. `fp16` for `*.fp16.safetensors` (default: plain files,
    /// or fp16 if only those exist).
    #[arg(long)]
    pub variant: Option<String>,
    /// A LoRA to merge into the model's frozen weights, `FILE[:SCALE]` (scale 1 if omitted;
    /// kohya/A1111 or diffusers/PEFT format); repeat for several.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<models::LoraSpec>,
    /// For a single-file checkpoint: a diffusers folder whose configs (and tokenizer) to use
    /// instead of inferring them from the tensors' shapes with SD v1.x's head counts,
    /// scheduler and tokenizer.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Half precision: weights stored in f16 (half the memory), f16 arithmetic (norm
    /// statistics, softmax and convolution sums in f32). Tuning in mixed precision, as the
    /// reference's autocast: f16 activations and arithmetic, f32 tuned layers and AdamW
    /// state, the loss scaled for backward. Needs an adapter with f16 support.
    #[arg(long)]
    pub f16: bool,
    /// How sparse-causal and temporal attention run: `kernels`, tav's memory-efficient WGSL
    /// kernels (no score matrix in memory; the default wherever WGSL runs), or `plain`, the
    /// tensor-op reference path (the only one on --device flex) [default: kernels on a wgpu
    /// adapter, plain on flex].
    #[arg(long, value_enum)]
    pub attention: Option<gpu::AttentionChoice>,
    /// The old spelling of `--attention kernels` (kept so old scripts still run).
    #[arg(long, conflicts_with = "attention")]
    pub kernels: bool,
    /// Tuning: `on` keeps only each block's input for the backward pass and runs the block
    /// again there (a fraction of the memory, about a third more compute); `off` keeps every
    /// activation; `auto` recomputes when the step would otherwise be planned over 2 GiB.
    #[arg(long, value_enum, default_value = "auto")]
    pub recompute: gpu::RecomputeChoice,
    /// Device: auto (wgpu's default adapter), discrete[:N], integrated[:N], virtual[:N],
    /// cpu (a wgpu CPU adapter such as lavapipe), flex (burn's CPU backend; no WGSL
    /// kernels; several times faster than lavapipe on a machine without a GPU) or torch
    /// (libtorch's CPU kernels; only in a tav built with the `libtorch` feature).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Output folder.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// No progress bars or messages (errors still go to stderr).
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
    /// Machine-readable JSON lines on stdout instead of progress bars.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone, Default)]
pub struct ClipArgs {
    /// The input clip: .mp4 (H.264), .gif, or a folder of PNG/JPEG frames; `demo` for the
    /// built-in procedural clip.
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Number of frames to sample, or `all` (every frame from --start at --stride to the
    /// clip's end) [default: 24, or the tuned weights' value].
    #[arg(value_parser = crate::cli::clip_frames, long)]
    pub frames: Option<usize>,
    /// First frame [default: 0].
    #[arg(long)]
    pub start: Option<usize>,
    /// Take every Nth frame [default: 2].
    #[arg(value_parser = crate::cli::count, long)]
    pub stride: Option<usize>,
    /// Width in pixels, a multiple of 64 [default: 512].
    #[arg(value_parser = crate::cli::side, long)]
    pub width: Option<usize>,
    /// Height in pixels, a multiple of 64 [default: 512].
    #[arg(value_parser = crate::cli::side, long)]
    pub height: Option<usize>,
    /// Stretch to the size instead of centre-cropping to its aspect ratio.
    #[arg(long)]
    pub no_crop: bool,
}

#[derive(Args, Clone, Default)]
pub struct TuneArgs {
    /// Tuning steps [default: 500].
    #[arg(value_parser = crate::cli::steps, long)]
    pub steps: Option<usize>,
    /// Learning rate (AdamW, constant) [default: 3e-5].
    #[arg(value_parser = crate::cli::learning_rate, long)]
    pub lr: Option<f64>,
    /// Seed of every random draw [default: 33].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Save a resumable checkpoint every N steps [default: 100].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Ignore an existing checkpoint in the output folder instead of resuming from it.
    #[arg(long)]
    pub restart: bool,
}

#[derive(Args, Clone, Default)]
pub struct EditArgs {
    /// DDIM inversion steps [default: 50].
    #[arg(value_parser = crate::cli::ddim_steps, long)]
    pub inversion_steps: Option<usize>,
    /// DDIM sampling steps per edit [default: 50].
    #[arg(value_parser = crate::cli::ddim_steps, long)]
    pub inference_steps: Option<usize>,
    /// Classifier-free guidance scale [default: 12.5].
    #[arg(value_parser = crate::cli::guidance, long)]
    pub guidance: Option<f64>,
    /// Rescale the guided prediction toward the conditional one's standard deviation, 0–1
    /// (0.5–0.7 keeps strong guidance from washing frames out) [default: 0, the reference].
    #[arg(value_parser = crate::cli::rescale, long)]
    pub guidance_rescale: Option<f64>,
    /// Also write every edited frame as PNG.
    #[arg(long)]
    pub png: bool,
    /// Invert and edit in windows of this many frames, each anchored on the clip's frame 0,
    /// their predictions blended where they overlap: memory stays that of one window however
    /// long the clip (docs/long-clips.md) [default: the whole clip at once].
    #[arg(value_parser = crate::cli::frames, long)]
    pub window: Option<usize>,
    /// Frames neighbouring windows share [default: a quarter of --window, at least 1].
    #[arg(long, requires = "window")]
    pub window_overlap: Option<usize>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Tune the model on a clip and its prompt; writes tuned.safetensors (+ checkpoint, loss.png).
    Tune(commands::tune::TuneCommand),
    /// Invert the clip with tuned weights and sample one edited video per prompt.
    Edit(commands::edit::EditCommand),
    /// The whole job from a job file (tune, invert, edit), e.g. jobs/car-turn.toml.
    /// Flags override the file.
    Run(commands::run::RunCommand),
    /// Many clips from one manifest, each tuned and inverted once and edited with each of its
    /// prompts; `--index I --count N` runs the clips at positions I mod N, so a Kubernetes
    /// Indexed Job or a Slurm array shards a batch (docs/scale-out.md). Resumable: finished
    /// clips are skipped, a clip cut off mid-tuning resumes from its checkpoint.
    Batch(commands::batch::BatchCommand),
    /// Load a checkpoint folder and run every component once on random input, printing
    /// what was loaded and checked.
    Check(commands::check::CheckCommand),
    /// Convert a model (diffusers folder or single-file checkpoint, LoRAs merged) into the layout the browser loads: f16 weights in shards
    /// under WebGPU's binding limits, a manifest with configs and SHA-256s, the tokenizer.
    PackWeb(commands::pack::PackWebCommand),
    /// Serve the browser demo on 127.0.0.1 with nothing to download: builds the wasm package
    /// and packs the toy model when they are missing or stale, then prints the page's URL.
    DemoWeb(commands::demo_web::DemoWebCommand),
    /// Train the toy world's model from a seed (VAE, then text encoder and UNet) on generated
    /// frames and write it as a diffusers folder in f16, loadable with --model.
    Pretrain(commands::pretrain::PretrainCommand),
    /// Text-to-video without a source clip: sample each prompt from the same seeded noise
    /// (DDIM, classifier-free guidance) with the inflated model, or with tuned weights.
    /// Writes NN-prompt.gif per prompt and grid.gif to --out (default outputs/sample).
    Sample(commands::sample::SampleCommand),
    /// Score one-shot edits of held-out toy-world clips (colour, background and shape
    /// changes) from their pixels: attribute success, motion kept (mask IoU, centroid path),
    /// frame-to-frame change and colour drift, for the full method and its ablations with the
    /// same seeds.
    /// Prints a table; `--out DIR` also writes DIR/score.json and DIR/videos/ (each clip
    /// beside its edits, per method).
    Score(commands::score::ScoreCommand),
    /// Draw a toy-world clip (a coloured shape moving over a textured background) from a
    /// seed and write it as a video; prints its caption. Unnamed attributes come from the seed.
    ToyClip(commands::toy::ToyClipCommand),
    /// The memory plan of a job before anything is allocated: peak device memory, largest
    /// single buffer and what dominates, for a UNet forward, a tuning step, an inversion
    /// step and a guided sampling step. `tav tune/edit/run` check the same plan first.
    Plan(commands::plan::PlanCommand),
    /// Time a UNet forward, a tuning step and a guided sampling step on random weights;
    /// prints the median time, FLOP count and rate, and peak GPU memory of each as JSON lines
    /// (or, with `--kernel attention`, the attention kernels alone).
    Bench(commands::bench::BenchCommand),
}

// Bounded values, parsed once for every subcommand: a mistyped or hostile value is refused
// while the command line is read, naming the flag (clap adds it), before anything runs. Job
// files go through the same checks (`jobfile::Job::validate`).

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of the right kind"))
}

/// Frames of a clip: 1 to [`jobfile::MAX_FRAMES`].
pub fn frames(s: &str) -> Result<usize, String> {
    let v: usize = number(s)?;
    crate::jobfile::check_frames(v).map(|()| v)
}

/// A clip's frame count, or `all` ([`crate::video::Sampling::ALL`]).
pub fn clip_frames(s: &str) -> Result<usize, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(crate::video::Sampling::ALL);
    }
    frames(s)
}

/// Width, height or size in pixels: a positive multiple of 64 up to [`jobfile::MAX_SIDE`].
pub fn side(s: &str) -> Result<usize, String> {
    let v: usize = number(s)?;
    crate::jobfile::check_side(v).map(|()| v)
}

/// Tuning or training steps: 1 to [`jobfile::MAX_STEPS`].
pub fn steps(s: &str) -> Result<usize, String> {
    let v: usize = number(s)?;
    crate::jobfile::check_steps(v).map(|()| v)
}

/// DDIM steps: 1 to [`jobfile::MAX_DDIM_STEPS`].
pub fn ddim_steps(s: &str) -> Result<usize, String> {
    let v: usize = number(s)?;
    crate::jobfile::check_ddim_steps(v).map(|()| v)
}

/// A count that must be at least 1 (stride, runs, clips, tokens…), up to 2²⁴.
pub fn count(s: &str) -> Result<usize, String> {
    let v: usize = number(s)?;
    if v == 0 || v > 1 << 24 {
        return Err(format!("{v} is out of range (1 to {})", 1 << 24));
    }
    Ok(v)
}

/// A learning rate: finite, above 0.
pub fn learning_rate(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    crate::jobfile::check_learning_rate(v).map(|()| v)
}

/// A guidance scale: 0 to [`jobfile::MAX_GUIDANCE`].
pub fn guidance(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    crate::jobfile::check_guidance(v).map(|()| v)
}

/// Min-SNR's γ: finite, above 0 (papers use 1 to 20).
pub fn min_snr_gamma(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v > 0.0 && v <= 1e6 {
        Ok(v)
    } else {
        Err(format!("{v} is not a γ above 0 (typically 5)"))
    }
}

/// A share of something: 0 to 1.
pub fn share(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a share from 0 to 1"))
    }
}

/// Offset noise's scale: 0 to 1 (0.1 is typical; past 1 the offset outweighs the noise).
pub fn offset_noise(s: &str) -> Result<f32, String> {
    let v: f32 = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not an offset-noise scale from 0 to 1 (typically 0.1)"
        ))
    }
}

/// The smallest factor training noise is scaled by: above 0, at most 1 (1: plain noise).
pub fn noise_scale_from(s: &str) -> Result<f32, String> {
    smallest_factor(s, "noise scale", "plain noise")
}

/// The smallest factor a decoder step fades a latent by: above 0, at most 1.
pub fn decoder_contrast_from(s: &str) -> Result<f32, String> {
    smallest_factor(s, "latent contrast", "latents as encoded")
}

/// The low end of a factor drawn from it to 1: above 0 (a factor of 0 erases what it
/// scales), at most 1 (`one` says what 1 means).
fn smallest_factor(s: &str, what: &str, one: &str) -> Result<f32, String> {
    let v: f32 = number(s)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not a {what} above 0 and at most 1 (1: {one})"
        ))
    }
}

/// A guidance rescale: 0 to 1.
pub fn rescale(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    crate::jobfile::check_rescale(v).map(|()| v)
}

//! The memory plan of a job, before anything is allocated: for a UNet forward, a tuning
//! step, an inversion step and a guided sampling step, the peak device memory, the largest
//! single buffer, and what dominates. Counted from the configs and the video's shape by
//! walking the UNet level by level, as its forward pass allocates.
//!
//! What is counted: the weights (and, for tuning, the trainable layers' gradients and AdamW
//! moments); the skip connections the up blocks consume; the working set of the widest
//! level (a ResNet's or a transformer block's temporaries); and, for tuning, every
//! activation autodiff keeps for the backward pass. The per-layer counts of kept
//! activations (`*_KEPT`) are what burn's ops keep in tav's layers; they are estimates, to be
//! checked against `tav bench` measurements (BENCHMARKS.md).

use burn::tensor::Device;

use crate::clip::ClipTextEncoder;
use crate::config::{ClipConfig, UNetConfig, VaeConfig};
use crate::error::Result;
use crate::limits::{DeviceLimits, human_bytes};
use crate::params::unet_param_counts;
use crate::vae::Vae;
use crate::weights::ParamBuilder;

/// A job's sizes and settings.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub unet: UNetConfig,
    /// Parameters of the 3D UNet, the VAE and the text encoder, and the trainable ones.
    pub unet_params: u64,
    pub trainable_params: u64,
    pub vae_params: u64,
    pub text_params: u64,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Frozen weights and inference activations in f16.
    pub f16: bool,
    /// Sparse-causal and temporal attention through the WGSL kernels.
    pub kernels: bool,
    /// Tuning recomputes each block in backward ([`crate::recompute`]).
    pub recompute: bool,
}

/// A video job's shape and precision.
#[derive(Debug, Clone, Copy)]
pub struct JobShape {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub f16: bool,
    pub kernels: bool,
    pub recompute: bool,
}

impl PlanInput {
    /// From the three configs; parameter counts come from shapes alone (nothing allocated,
    /// `device` only names where shapes-only parameters would live).
    pub fn new(
        unet: &UNetConfig,
        vae: &VaeConfig,
        clip: &ClipConfig,
        job: JobShape,
        device: &Device,
    ) -> Result<Self> {
        let counts = unet_param_counts(unet, device)?;
        let count = |p: &ParamBuilder| -> u64 {
            p.entries()
                .iter()
                .map(|e| e.shape.iter().product::<usize>() as u64)
                .sum()
        };
        let p = ParamBuilder::shapes_only(device);
        Vae::load(&p, vae)?;
        let vae_params = count(&p);
        let p = ParamBuilder::shapes_only(device);
        ClipTextEncoder::load(&p, clip)?;
        let text_params = count(&p);
        Ok(Self {
            unet: unet.clone(),
            unet_params: counts.total as u64,
            trainable_params: counts.trainable as u64,
            vae_params,
            text_params,
            frames: job.frames,
            height: job.height,
            width: job.width,
            f16: job.f16,
            kernels: job.kernels,
            recompute: job.recompute,
        })
    }
}

/// The plan of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// `forward`, `tuning`, `inversion` or `sampling`.
    pub step: &'static str,
    pub peak_bytes: u64,
    pub largest_buffer_bytes: u64,
    /// What the peak is mostly made of, in words.
    pub dominant: String,
}

/// Activations a ResNet block keeps for backward, in units of its input and output widths:
/// each GroupNorm's normalised output (`fused::standardize` keeps only that), each SiLU's
/// input (`fused::silu`), each conv's input.
const RESNET_KEPT_IN: u64 = 3;
const RESNET_KEPT_OUT: u64 = 4;
/// A transformer block's kept activations per token, in units of its width: the three
/// LayerNorms' normalised outputs, q/k/v and the attention output of both self-attentions
/// (the kernels keep no scores), cross-attention's query and output, the residual sums, and
/// the GEGLU feed-forward (8× wide projection, its GELU, the 4× wide product).
const TRANSFORMER_KEPT: u64 = 37;
/// The same with GEGLU as one op (the kernels): it keeps the projection only, not its GELU.
const TRANSFORMER_KEPT_FUSED_GEGLU: u64 = 33;
/// What a transformer holds at its peak while it runs again in backward (recompute): each
/// of its four sublayers keeps only its input (with the norm and projections around them,
/// about 7), and the sublayer running again keeps its own (self-attention: the norm, q, k,
/// v, the kernel's output, and their gradients, about 11; the feed-forward runs in eighths
/// of its rows, about 2 wide).
const TRANSFORMER_RECOMPUTE_PEAK: u64 = 18;
/// Live temporaries of a ResNet or transformer block at once during inference, in units of
/// the level's activation.
const WORKING_SET: u64 = 4;

/// What burn's memory pools hold beyond the tensors themselves (page rounding, small-tensor
/// pages, the metadata pool): fitted to `tav bench` on lavapipe (BENCHMARKS.md), where the
/// tiny model's steps hold about 4–5 MiB more than their tensors and SD v1.5's a forward about 5% more.
const POOL_OVERHEAD_PER_MILLE: u64 = 25;
const POOL_OVERHEAD_BYTES: u64 = 4 << 20;

/// One level of the UNet as the forward pass meets it.
struct Level {
    channels: usize,
    /// Widest input of any ResNet at this level (an up block's concatenation of the skip).
    widest_input: usize,
    tokens: usize,
    heads: usize,
    resnets: usize,
    transformers: usize,
}

fn levels(cfg: &UNetConfig, latent_h: usize, latent_w: usize) -> Vec<Level> {
    let ch = &cfg.block_out_channels;
    let n = ch.len();
    let mut out = Vec::new();
    for (i, &c) in ch.iter().enumerate() {
        let attention = cfg.down_block_types[i].starts_with("CrossAttn");
        // Up block n-1-i works at this level: its first ResNet takes the previous level's
        // output plus this level's skip.
        let up_prev = if i + 1 < n { ch[i + 1] } else { c };
        out.push(Level {
            channels: c,
            widest_input: up_prev + c,
            tokens: (latent_h >> i) * (latent_w >> i),
            heads: cfg.attention_head_dim.get(i),
            // Down: layers resnets; up: layers + 1.
            resnets: 2 * cfg.layers_per_block + 1,
            transformers: if attention {
                2 * cfg.layers_per_block + 1
            } else {
                0
            },
        });
    }
    out
}

/// Bytes of the weights the frozen model holds.
fn weight_bytes(input: &PlanInput) -> u64 {
    let frozen = if input.f16 { 2 } else { 4 };
    (input.unet_params - input.trainable_params) * frozen
        + input.trainable_params * 4
        + (input.vae_params + input.text_params) * frozen
}

struct Walk {
    /// Peak of live activations during one forward (inference).
    inference_peak: u64,
    /// Activations autodiff keeps for backward.
    kept: u64,
    /// With block-level recompute: the blocks' inputs (f16 in mixed-precision tuning), the
    /// up/downsamplers' inputs, and the most one block keeps while it runs again in backward.
    kept_block_inputs: u64,
    kept_sampler_inputs: u64,
    largest_block: u64,
    /// The attention kernels' backward scratch at its largest (frame 0's partial sums).
    attention_scratch: u64,
    largest: u64,
    largest_what: String,
}

fn walk(input: &PlanInput, batch: usize, bytes: u64, limits: &DeviceLimits) -> Walk {
    let (lh, lw) = (input.height / 8, input.width / 8);
    let n = (batch * input.frames) as u64;
    let mut skips = 0u64;
    let mut kept = 0u64;
    let mut kept_block_inputs = 0u64;
    let mut kept_sampler_inputs = 0u64;
    let mut largest_block = 0u64;
    let mut attention_scratch = 0u64;
    let mut working = 0u64;
    let mut largest = 0u64;
    let mut largest_what = String::new();
    let cap = limits.max_buffer_bytes;
    let note = |bytes: u64, what: String, largest: &mut u64, largest_what: &mut String| {
        if bytes > *largest {
            *largest = bytes;
            *largest_what = what;
        }
    };
    for (i, level) in levels(&input.unet, lh, lw).iter().enumerate() {
        let act = n * level.tokens as u64 * level.channels as u64 * bytes;
        let widest = n * level.tokens as u64 * level.widest_input as u64 * bytes;
        note(
            widest,
            format!("level {i}'s up-block concatenation"),
            &mut largest,
            &mut largest_what,
        );
        // Skips: each down ResNet/transformer output and the downsampler's.
        skips += act * (input.unet.layers_per_block as u64 + 1);
        kept += level.resnets as u64 * (RESNET_KEPT_IN * act + RESNET_KEPT_OUT * act)
            + (widest - act) * RESNET_KEPT_IN;
        // Recompute keeps each block's input (an up block's concatenation counted at its
        // widest), and the up/downsamplers' inputs.
        kept_block_inputs += level.resnets as u64 * act + (widest - act);
        kept_sampler_inputs += 2 * act;
        largest_block = largest_block.max(RESNET_KEPT_IN * widest + RESNET_KEPT_OUT * act);
        let mut level_working = WORKING_SET * widest.max(act);
        if level.transformers > 0 {
            let c = level.channels as u64;
            let tokens = n * level.tokens as u64;
            let transformer_kept = if input.kernels {
                TRANSFORMER_KEPT_FUSED_GEGLU
            } else {
                TRANSFORMER_KEPT
            };
            kept += level.transformers as u64 * transformer_kept * act;
            kept_block_inputs += level.transformers as u64 * act;
            // Cross-attention's probabilities against 77 tokens (f32; `fused::softmax_last`
            // keeps its output only, not the scores).
            let cross_kept = tokens * level.heads as u64 * 77 * 4;
            // The tiled kernels' backward sums frame 0's key/value gradients per chunk of
            // query frames apart (f32, dk and dv) before adding them.
            let chunks = input.frames.div_ceil(tav_shaders::FRAME_CHUNK as usize) as u64;
            let partials = if input.kernels && chunks > 1 {
                2 * chunks * batch as u64 * level.tokens as u64 * c * 4
            } else {
                0
            };
            attention_scratch = attention_scratch.max(partials);
            largest_block =
                largest_block.max(TRANSFORMER_RECOMPUTE_PEAK * act + cross_kept + partials);
            // The GEGLU projection (8·C wide) goes through in row chunks under the cap.
            let ff = (tokens * 8 * c * bytes).min(cap);
            note(
                ff,
                format!("level {i}'s feed-forward"),
                &mut largest,
                &mut largest_what,
            );
            // Cross-attention scores against 77 tokens, chunked under the cap (f32).
            let cross = (tokens * level.heads as u64 * 77 * 4).min(cap);
            note(
                cross,
                format!("level {i}'s cross-attention scores"),
                &mut largest,
                &mut largest_what,
            );
            kept += level.transformers as u64 * cross_kept;
            if !input.kernels {
                // Sparse-causal probabilities (the scores are not kept): each query against 2L keys, f32.
                let scores = tokens * level.heads as u64 * 2 * level.tokens as u64 * 4;
                note(
                    scores.min(cap),
                    format!("level {i}'s sparse-causal scores"),
                    &mut largest,
                    &mut largest_what,
                );
                kept += level.transformers as u64 * scores;
                largest_block = largest_block.max(TRANSFORMER_KEPT * act + cross_kept + scores);
                level_working = level_working.max(2 * scores.min(cap) + 4 * act);
            }
            level_working = level_working.max(ff + 2 * act);
        }
        working = working.max(level_working);
    }
    Walk {
        inference_peak: skips + working,
        kept,
        kept_block_inputs,
        kept_sampler_inputs,
        largest_block,
        attention_scratch,
        largest,
        largest_what,
    }
}

/// The plan of the four steps for `input` on a device with `limits`.
pub fn plan(input: &PlanInput, limits: &DeviceLimits) -> Vec<StepPlan> {
    let weights = weight_bytes(input);
    let inference_bytes = if input.f16 { 2 } else { 4 };
    let single = walk(input, 1, inference_bytes, limits);
    let guided = walk(input, 2, inference_bytes, limits);
    // Tuning's activations are f32, or f16 in mixed precision (`--f16`, as the reference's
    // autocast); the tuned layers stay f32 with their gradients and AdamW's two moments.
    let tuning = walk(input, 1, inference_bytes, limits);
    let optimiser = input.trainable_params * 4 * 3;
    let kept = if input.recompute {
        tuning.kept_block_inputs + tuning.kept_sampler_inputs + tuning.largest_block
    } else {
        tuning.kept + tuning.attention_scratch
    };
    let step = |name: &'static str, w: &Walk, extra: u64, extra_what: &str| {
        let activations = w.inference_peak + extra;
        let dominant = if activations > weights {
            format!("activations ({}{extra_what})", human_bytes(activations))
        } else {
            format!("weights ({})", human_bytes(weights))
        };
        let tensors = weights + activations;
        StepPlan {
            step: name,
            peak_bytes: tensors + tensors * POOL_OVERHEAD_PER_MILLE / 1000 + POOL_OVERHEAD_BYTES,
            largest_buffer_bytes: w.largest,
            dominant: format!("{dominant}; largest buffer: {}", w.largest_what),
        }
    };
    vec![
        step("forward", &single, 0, ""),
        step(
            "tuning",
            &tuning,
            kept + optimiser,
            if input.recompute {
                ", block inputs kept for backward"
            } else {
                ", kept for backward"
            },
        ),
        step("inversion", &single, 0, ""),
        if guided.largest <= limits.max_buffer_bytes {
            step("sampling", &guided, 0, ", guidance batch of 2")
        } else {
            // `edit::Denoiser::sampling_step` runs the two halves of the guided batch one after the
            // other when the batch of 2 would cross the device's largest buffer.
            step("sampling", &single, 0, ", guidance in two passes")
        },
    ]
}

/// Above this planned tuning peak (keeping every activation), tuning recomputes blocks by
/// default: every Stable Diffusion job, none of the tiny test models' (whose steps then run
/// a third faster).
pub const RECOMPUTE_ABOVE_BYTES: u64 = 2 << 30;

/// Whether a job planned without recompute (`plans`) should recompute its tuning blocks.
pub fn recompute_needed(plans: &[StepPlan]) -> bool {
    plans
        .iter()
        .any(|p| p.step == "tuning" && p.peak_bytes > RECOMPUTE_ABOVE_BYTES)
}

/// What the user can change to make a job fit, for the refusal's message.
fn knobs(job: &JobShape) -> String {
    let mut knobs = vec![
        format!("fewer --frames (now {})", job.frames),
        format!(
            "a smaller --width/--height (now {}×{})",
            job.width, job.height
        ),
    ];
    if !job.f16 {
        knobs.push("--f16".into());
    }
    if !job.kernels {
        knobs.push("--attention kernels".into());
    }
    if !job.recompute {
        knobs.push("--recompute on".into());
    }
    knobs.join(", ")
}

/// Refuses a job whose planned `steps` do not fit the device: a buffer over its largest
/// binding, or a peak over its memory where that is known. The message names the step,
/// the figures and the knobs.
pub fn check_fits(
    plans: &[StepPlan],
    steps: &[&str],
    limits: &DeviceLimits,
    job: &JobShape,
) -> Result<()> {
    for plan in plans.iter().filter(|p| steps.contains(&p.step)) {
        if plan.largest_buffer_bytes > limits.max_buffer_bytes {
            return Err(crate::TavError::OutOfMemory(format!(
                "the {} step needs a {} buffer ({}) and this device allows {} in one buffer: \
                 try {}",
                plan.step,
                human_bytes(plan.largest_buffer_bytes),
                plan.dominant,
                human_bytes(limits.max_buffer_bytes),
                knobs(job)
            )));
        }
        if let Some(memory) = limits.memory_bytes
            && plan.peak_bytes > memory
        {
            return Err(crate::TavError::OutOfMemory(format!(
                "the {} step is planned at {} ({}) and this device has {}: try {}",
                plan.step,
                human_bytes(plan.peak_bytes),
                plan.dominant,
                human_bytes(memory),
                knobs(job)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15(frames: usize, size: usize, f16: bool) -> Vec<StepPlan> {
        sd15_with(frames, size, f16, true)
    }

    fn sd15_with(frames: usize, size: usize, f16: bool, recompute: bool) -> Vec<StepPlan> {
        let input = PlanInput::new(
            &UNetConfig::sd_v1_5(),
            &VaeConfig::sd_v1_5(),
            &ClipConfig::sd_v1_5(),
            JobShape {
                frames,
                height: size,
                width: size,
                f16,
                kernels: true,
                recompute,
            },
            &Device::default(),
        )
        .unwrap();
        plan(&input, &DeviceLimits::from_wgpu(1 << 40, 2 << 30))
    }

    #[test]
    fn plans_grow_with_frames_and_size() {
        let small = sd15(8, 256, true);
        let large = sd15(24, 512, true);
        for (a, b) in small.iter().zip(&large) {
            assert_eq!(a.step, b.step);
            assert!(b.peak_bytes > a.peak_bytes, "{a:?} vs {b:?}");
            assert!(b.largest_buffer_bytes >= a.largest_buffer_bytes);
        }
        let steps: Vec<_> = large.iter().map(|p| p.step).collect();
        assert_eq!(steps, ["forward", "tuning", "inversion", "sampling"]);
    }

    /// Recompute shrinks only the tuning step, by several times at SD sizes, and is chosen
    /// by default there; inference plans are the same either way.
    #[test]
    fn recompute_shrinks_the_tuning_plan_only() {
        let kept = sd15_with(8, 512, true, false);
        let again = sd15_with(8, 512, true, true);
        for (a, b) in kept.iter().zip(&again) {
            if a.step == "tuning" {
                assert!(b.peak_bytes * 2 < a.peak_bytes, "{a:?} vs {b:?}");
            } else {
                assert_eq!(a, b);
            }
        }
        assert!(recompute_needed(&kept));
    }

    /// The reference's own job (SD v1.5, 24 frames of 512²) in mixed precision with recompute
    /// is planned under a 12 GB card's 12 GiB; f16 activations (mixed precision) are what
    /// bring it there.
    #[test]
    fn mixed_precision_tuning_of_the_reference_job_plans_under_12_gib() {
        let tuning = |f16| {
            sd15(24, 512, f16)
                .into_iter()
                .find(|p| p.step == "tuning")
                .unwrap()
        };
        let (mixed, full) = (tuning(true), tuning(false));
        println!("tuning: f16 {mixed:?}; f32 {full:?}");
        assert!(mixed.peak_bytes < 12 << 30, "{mixed:?}");
        assert!(full.peak_bytes > 12 << 30, "{full:?}");
    }

    #[test]
    fn a_buffer_over_the_limit_is_refused_naming_the_knobs() {
        let job = JobShape {
            frames: 24,
            height: 512,
            width: 512,
            f16: false,
            kernels: true,
            recompute: true,
        };
        let plans = sd15(24, 512, false);
        let lavapipe = DeviceLimits::from_wgpu(1 << 40, 128 << 20);
        let err = check_fits(&plans, &["sampling"], &lavapipe, &job)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sampling step needs a"), "{err}");
        assert!(
            err.contains("fewer --frames (now 24)") && err.contains("--f16"),
            "{err}"
        );
        let small_memory = DeviceLimits {
            memory_bytes: Some(1 << 30),
            ..DeviceLimits::from_wgpu(1 << 40, 1 << 40)
        };
        let err = check_fits(&plans, &["tuning"], &small_memory, &job)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tuning step is planned at"), "{err}");
        assert!(check_fits(&plans, &["tuning"], &DeviceLimits::UNLIMITED, &job).is_ok());
    }
}

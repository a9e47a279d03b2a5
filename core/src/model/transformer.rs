//! Tune-A-Video's `Transformer3DModel` and its block: per-frame GroupNorm and projection,
//! then for every block sparse-causal self-attention, cross-attention to the text, a GEGLU
//! feed-forward and the new temporal attention, each with a residual.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;

use crate::attention::Attention;
use crate::error::Result;
use crate::layers::{Conv2d, ConvShape, GroupNorm, LayerNorm, Linear};
use crate::recompute::recompute;
use crate::weights::ParamBuilder;

const LAYER_NORM_EPS: f64 = 1e-5;
const TRANSFORMER_GROUP_NORM_EPS: f64 = 1e-6;

/// GEGLU feed-forward: `net.0.proj` (to 2×4·dim), `hidden · gelu(gate)`, `net.2`.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub proj_in: Linear,
    pub proj_out: Linear,
}

impl FeedForward {
    pub fn load(p: &ParamBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj_in: Linear::load(&p.sub("net.0.proj"), dim, inner * 2, true)?,
            proj_out: Linear::load(&p.sub("net.2"), inner, dim, true)?,
        })
    }

    /// `x` is `[N, L, C]`. The GEGLU input is 8·C wide (2 GB for SD's finest level at 24
    /// frames with guidance), so rows go through in chunks whose widest tensor fits in
    /// `max_buffer_bytes`. `fused`: GEGLU as one kernel where WGSL runs
    /// ([`crate::kernels::geglu`]); otherwise burn's ops (the reference path).
    pub fn forward(&self, x: Tensor<3>, max_buffer_bytes: u64, fused: bool) -> Tensor<3> {
        let [n, l, c] = x.dims();
        let wide = 2 * self.proj_out.in_features() as u64;
        let row_bytes = wide * x.dtype().size() as u64;
        let rows = (max_buffer_bytes / row_bytes.max(1)).max(1) as usize;
        if rows >= n * l {
            return self.rows(x, fused);
        }
        let flat = x.reshape([1, n * l, c]);
        let mut parts = Vec::new();
        let mut done = 0;
        while done < n * l {
            let take = rows.min(n * l - done);
            parts.push(self.rows(flat.clone().narrow(1, done, take), fused));
            done += take;
        }
        Tensor::cat(parts, 1).reshape([n, l, c])
    }

    fn rows(&self, x: Tensor<3>, fused: bool) -> Tensor<3> {
        let projected = self.proj_in.forward(x);
        let gated = if fused && crate::kernels::geglu_supported(&projected) {
            crate::kernels::geglu(projected)
        } else {
            let [hidden, gate] = projected.chunk(2, 2).try_into().expect("two chunks");
            hidden * gelu(gate)
        };
        self.proj_out.forward(gated)
    }
}

/// Which self-attention the first attention layer of each block does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfAttentionKind {
    /// Tune-A-Video: frame i attends to frames 0 and i−1.
    SparseCausal,
    /// Each frame attends only to itself (the image model; an ablation).
    PerFrame,
}

/// Runtime options of the video transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoAttentionOptions {
    pub self_attention: SelfAttentionKind,
    /// Whether the temporal layers run at all (an ablation turns them off).
    pub temporal: bool,
    /// Sparse-causal and temporal attention through the memory-efficient WGSL kernels, and
    /// GEGLU as one kernel, wherever they run (`false`: burn's tensor ops throughout, the
    /// reference implementation).
    /// On by default: on a device without WGSL (burn's CPU backend) the plain path runs
    /// anyway, so the default is right everywhere.
    pub kernels: bool,
    /// The UNet's arithmetic in f16 (activations f16; norm statistics, softmax, the kernels'
    /// accumulators and tuned layers stay f32). Needs `shader-f16`; the tuning loop reads it
    /// as mixed precision ([`crate::tune::Tuner::step`]).
    pub f16_compute: bool,
    /// The device's largest tensor in bytes ([`crate::limits::DeviceLimits`]): the
    /// feed-forward and the plain path's attention scores are computed in pieces below it.
    pub max_buffer_bytes: u64,
    /// Tuning keeps only each ResNet block's and video transformer's input for the backward
    /// pass and runs the block again there ([`crate::recompute`]): on wgpu, the activations
    /// a tuning step holds shrink to the blocks' inputs, for about a third more compute. No
    /// effect outside autodiff. Off by default; `tav` turns it on for Stable Diffusion jobs.
    pub recompute: bool,
}

impl Default for VideoAttentionOptions {
    fn default() -> Self {
        Self {
            self_attention: SelfAttentionKind::SparseCausal,
            temporal: true,
            kernels: true,
            f16_compute: false,
            max_buffer_bytes: u64::MAX,
            recompute: false,
        }
    }
}

impl crate::recompute::SideInput for VideoAttentionOptions {
    fn untracked(self) -> Self {
        self
    }
}

/// `BasicTransformerBlock` of Tune-A-Video.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
    pub norm_temp: LayerNorm,
    pub attn_temp: Attention,
}

impl TransformerBlock {
    pub fn load(p: &ParamBuilder, dim: usize, heads: usize, context_dim: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: LayerNorm::load(&p.sub("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: Attention::load(&p.sub("attn1"), dim, dim, heads, head_dim)?,
            norm2: LayerNorm::load(&p.sub("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: Attention::load(&p.sub("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: LayerNorm::load(&p.sub("norm3"), dim, LAYER_NORM_EPS)?,
            ff: FeedForward::load(&p.sub("ff"), dim)?,
            norm_temp: LayerNorm::load(&p.sub("norm_temp"), dim, LAYER_NORM_EPS)?,
            attn_temp: Attention::load(&p.sub("attn_temp"), dim, dim, heads, head_dim)?,
        })
    }

    /// `x` is `[(B·F), L, C]`; `context` is `[(B·F), M, Cc]`. Four residual sublayers:
    /// sparse-causal self-attention, cross-attention, feed-forward, temporal attention.
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: Tensor<3>,
        frames: usize,
        options: VideoAttentionOptions,
    ) -> Tensor<3> {
        let x = self.sublayer(x, (frames, options), Self::self_attention, options);
        let x = self.sublayer(x, (context, options), Self::cross_attention, options);
        let x = self.feed_forward_in_row_chunks(x, options);
        if !options.temporal {
            return x;
        }
        self.sublayer(x, (frames, options), Self::temporal_attention, options)
    }

    /// `sublayer(self, x, side)`; with recompute (which runs it only while the whole block
    /// runs again in backward), keeping only its input, so one sublayer's activations are
    /// live at a time.
    fn sublayer<S: crate::recompute::SideInput>(
        &self,
        x: Tensor<3>,
        side: S,
        sublayer: fn(&Self, Tensor<3>, S) -> Tensor<3>,
        options: VideoAttentionOptions,
    ) -> Tensor<3> {
        if options.recompute {
            recompute(self, x, side, sublayer)
        } else {
            sublayer(self, x, side)
        }
    }

    fn self_attention(
        &self,
        x: Tensor<3>,
        (frames, options): (usize, VideoAttentionOptions),
    ) -> Tensor<3> {
        let normed = self.norm1.forward(x.clone());
        let attended = match options.self_attention {
            SelfAttentionKind::SparseCausal => self.attn1.forward_sparse_causal(
                normed,
                frames,
                options.kernels,
                options.max_buffer_bytes,
            ),
            SelfAttentionKind::PerFrame => {
                self.attn1.forward_self(normed, options.max_buffer_bytes)
            }
        };
        attended + x
    }

    fn cross_attention(
        &self,
        x: Tensor<3>,
        (context, options): (Tensor<3>, VideoAttentionOptions),
    ) -> Tensor<3> {
        self.attn2.forward_cross(
            self.norm2.forward(x.clone()),
            context,
            options.max_buffer_bytes,
        ) + x
    }

    fn feed_forward(&self, x: Tensor<3>, (max_buffer_bytes, fused): (u64, bool)) -> Tensor<3> {
        self.ff
            .forward(self.norm3.forward(x.clone()), max_buffer_bytes, fused)
            + x
    }

    fn temporal_attention(
        &self,
        x: Tensor<3>,
        (frames, options): (usize, VideoAttentionOptions),
    ) -> Tensor<3> {
        self.attn_temp.forward_temporal(
            self.norm_temp.forward(x.clone()),
            frames,
            options.kernels,
            options.max_buffer_bytes,
        ) + x
    }

    /// The feed-forward sublayer; with recompute, in row chunks recomputed one by one: GEGLU's
    /// 8× wide projection and 4× wide products are the widest activations of a block, and
    /// every row (LayerNorm, GEGLU) is independent of the others, so a chunk of 1/8 of the
    /// rows holds about two block widths while it runs again.
    fn feed_forward_in_row_chunks(
        &self,
        x: Tensor<3>,
        options: VideoAttentionOptions,
    ) -> Tensor<3> {
        // The fused GEGLU goes with the kernels: `--attention plain` is burn's ops throughout.
        let max = (options.max_buffer_bytes, options.kernels);
        if !options.recompute {
            return self.feed_forward(x, max);
        }
        let [n, l, c] = x.dims();
        let rows = n * l;
        let per_chunk = rows.div_ceil(FEED_FORWARD_RECOMPUTE_CHUNKS);
        if per_chunk == rows {
            return recompute(self, x, max, Self::feed_forward);
        }
        let flat = x.reshape([1, rows, c]);
        let parts = (0..rows)
            .step_by(per_chunk)
            .map(|start| {
                let chunk = flat.clone().narrow(1, start, per_chunk.min(rows - start));
                recompute(self, chunk, max, Self::feed_forward)
            })
            .collect();
        Tensor::cat(parts, 1).reshape([n, l, c])
    }
}

/// Row chunks of the feed-forward sublayer under recompute ([`TransformerBlock`]).
const FEED_FORWARD_RECOMPUTE_CHUNKS: usize = 8;

/// The input/output projection of a transformer: a 1×1 conv (SD v1) or a linear layer
/// (`use_linear_projection`, SD v2).
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn load(p: &ParamBuilder, c_in: usize, c_out: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::load(p, c_in, c_out, true)?)
        } else {
            Projection::Conv(Conv2d::load(p, ConvShape::pointwise(c_in, c_out))?)
        })
    }
}

/// `Transformer3DModel` with one or more blocks.
#[derive(Module, Debug)]
pub struct Transformer3D {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub blocks: Vec<TransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer3D {
    pub fn load(
        p: &ParamBuilder,
        channels: usize,
        heads: usize,
        context_dim: usize,
        groups: usize,
        linear_projection: bool,
    ) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::load(&p.sub("norm"), groups, channels, TRANSFORMER_GROUP_NORM_EPS)?,
            proj_in: Projection::load(&p.sub("proj_in"), channels, channels, linear_projection)?,
            blocks: vec![TransformerBlock::load(
                &p.sub("transformer_blocks.0"),
                channels,
                heads,
                context_dim,
            )?],
            proj_out: Projection::load(&p.sub("proj_out"), channels, channels, linear_projection)?,
        })
    }

    /// `x` is `[(B·F), C, H, W]`; `context` is `[(B·F), M, Cc]` (the text repeated per frame).
    pub fn forward(
        &self,
        x: Tensor<4>,
        context: Tensor<3>,
        frames: usize,
        options: VideoAttentionOptions,
    ) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let residual = x.clone();
        // GroupNorm per frame, as the reference applies it after `(b f) c h w`.
        let normed = self.norm.forward(x);
        let tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(normed)),
            Projection::Linear(linear) => linear.forward(to_tokens(normed)),
        };
        let mut tokens = tokens;
        for block in &self.blocks {
            tokens = block.forward(tokens, context.clone(), frames, options);
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(from_tokens(tokens, h, w)),
            Projection::Linear(linear) => from_tokens(linear.forward(tokens), h, w),
        };
        debug_assert_eq!(out.dims(), [n, c, h, w]);
        out + residual
    }
}

/// `[N, C, H, W]` → `[N, H·W, C]`.
fn to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).swap_dims(1, 2)
}

/// `[N, H·W, C]` → `[N, C, H, W]`.
fn from_tokens(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [n, _, c] = x.dims();
    x.swap_dims(1, 2).reshape([n, c, h, w])
}

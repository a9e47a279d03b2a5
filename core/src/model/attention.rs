//! Attention as Tune-A-Video uses it: cross-attention to the text, sparse-causal
//! self-attention (frame i attends to frame 0 and frame i−1) and temporal attention (along
//! the frame axis at every spatial position).
//!
//! This is the plain tensor-op path: it materialises the score matrix, and is the
//! reference implementation that faster kernels are checked against.

use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::Result;
use crate::layers::Linear;
use crate::model::fused::softmax_last;
use crate::weights::ParamBuilder;

/// Scaled dot-product attention over heads: `q` is `[N, Lq, H·d]`, `k`/`v` `[N, Lk, H·d]`.
/// `mask` (`[Lq, Lk]`, true = hidden) is applied to every batch item and head.
pub fn multi_head(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    mask: Option<Tensor<2, Bool>>,
) -> Tensor<3> {
    let [n, lq, inner] = q.dims();
    let lk = k.dims()[1];
    let d = inner / heads;
    let split = |t: Tensor<3>, l: usize| t.reshape([n, l, heads, d]).swap_dims(1, 2);
    // The scale goes on q (Lq·d values) rather than on the scores (Lq·Lk), as the
    // reference's baddbmm folds it into its product: one pass fewer over the largest tensor.
    let q = split(q.mul_scalar((d as f64).powf(-0.5)), lq);
    let (k, v) = (split(k, lk), split(v, lk));
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if let Some(mask) = mask {
        let mask = mask.reshape([1, 1, lq, lk]).expand([n, heads, lq, lk]);
        scores = scores.mask_fill(mask, f32::MIN);
    }
    let dtype = scores.dtype();
    let probs = softmax_last(crate::layers::statistics_dtype(scores)).cast(dtype);
    probs.matmul(v).swap_dims(1, 2).reshape([n, lq, inner])
}

/// [`multi_head`] computed in pieces so that no score matrix (`[n, heads, rows, Lk]`, f32)
/// exceeds `max_buffer_bytes`: batch items first, then query rows within an item. Each
/// query row's softmax is independent of the others, so the result is the same.
pub fn multi_head_within(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    max_buffer_bytes: u64,
) -> Tensor<3> {
    let [n, lq, _] = q.dims();
    let lk = k.dims()[1];
    let row_bytes = (heads * lk * 4) as u64;
    let rows = (max_buffer_bytes / row_bytes.max(1)).max(1) as usize;
    if rows >= n * lq {
        return multi_head(q, k, v, heads, None);
    }
    if rows >= lq {
        let items = rows / lq;
        let parts = (0..n)
            .step_by(items)
            .map(|i| {
                let take = items.min(n - i);
                multi_head(
                    q.clone().narrow(0, i, take),
                    k.clone().narrow(0, i, take),
                    v.clone().narrow(0, i, take),
                    heads,
                    None,
                )
            })
            .collect();
        return Tensor::cat(parts, 0);
    }
    let items = (0..n)
        .map(|i| {
            let (k, v) = (k.clone().narrow(0, i, 1), v.clone().narrow(0, i, 1));
            let parts = (0..lq)
                .step_by(rows)
                .map(|r| {
                    let take = rows.min(lq - r);
                    let q = q.clone().narrow(0, i, 1).narrow(1, r, take);
                    multi_head(q, k.clone(), v.clone(), heads, None)
                })
                .collect();
            Tensor::cat(parts, 1)
        })
        .collect();
    Tensor::cat(items, 0)
}

/// diffusers' `CrossAttention`: `to_q`, `to_k`, `to_v` (no bias), `to_out.0` (bias).
#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
}

impl Attention {
    /// `query_dim` is the width of the tokens; `context_dim` that of what they attend to.
    pub fn load(
        p: &ParamBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: Linear::load(&p.sub("to_q"), query_dim, inner, false)?,
            to_k: Linear::load(&p.sub("to_k"), context_dim, inner, false)?,
            to_v: Linear::load(&p.sub("to_v"), context_dim, inner, false)?,
            to_out: Linear::load(&p.sub("to_out.0"), inner, query_dim, true)?,
            heads,
        })
    }

    /// Attention of `x` (`[N, L, C]`) to `context` (`[N, M, Cc]`); no score tensor larger
    /// than `max_buffer_bytes`.
    pub fn forward_cross(
        &self,
        x: Tensor<3>,
        context: Tensor<3>,
        max_buffer_bytes: u64,
    ) -> Tensor<3> {
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context.clone());
        let v = self.to_v.forward(context);
        self.to_out
            .forward(multi_head_within(q, k, v, self.heads, max_buffer_bytes))
    }

    /// Full self-attention of each item of `x` (`[N, L, C]`).
    pub fn forward_self(&self, x: Tensor<3>, max_buffer_bytes: u64) -> Tensor<3> {
        self.forward_cross(x.clone(), x, max_buffer_bytes)
    }

    /// Sparse-causal self-attention. `x` is `[(B·F), L, C]`, frame-major within each
    /// video. Frame i's keys and values are frame 0's followed by frame i−1's; frame 0
    /// uses frame 0 twice, as the reference does.
    ///
    /// With `kernels`, the WGSL kernels read K/V in place and store no score matrix.
    pub fn forward_sparse_causal(
        &self,
        x: Tensor<3>,
        frames: usize,
        kernels: bool,
        max_buffer_bytes: u64,
    ) -> Tensor<3> {
        let q = self.to_q.forward(x.clone());
        let k = self.to_k.forward(x.clone());
        let v = self.to_v.forward(x);
        let out = if kernels && crate::kernels::supported(&q, self.heads) {
            crate::kernels::video_attention(q, k, v, frames, self.heads, false)
        } else {
            let k = sparse_causal_context(k, frames);
            let v = sparse_causal_context(v, frames);
            multi_head_within(q, k, v, self.heads, max_buffer_bytes)
        };
        self.to_out.forward(out)
    }

    /// Temporal attention: `x` is `[(B·F), L, C]`; every spatial position attends over
    /// the F frames of its video (no positional encoding).
    ///
    /// With `kernels`, the WGSL kernels attend along frames in place (no transposes).
    pub fn forward_temporal(
        &self,
        x: Tensor<3>,
        frames: usize,
        kernels: bool,
        max_buffer_bytes: u64,
    ) -> Tensor<3> {
        if kernels {
            let q = self.to_q.forward(x.clone());
            if crate::kernels::supported(&q, self.heads) {
                let k = self.to_k.forward(x.clone());
                let v = self.to_v.forward(x);
                let out = crate::kernels::video_attention(q, k, v, frames, self.heads, true);
                return self.to_out.forward(out);
            }
        }
        let videos = x.dims()[0] / frames;
        let along_frames = frames_to_sequence(x, frames);
        let out = self.forward_self(along_frames, max_buffer_bytes);
        sequence_to_frames(out, videos)
    }
}

/// `[(B·F), L, C]` → `[(B·F), 2L, C]`: for frame i, `[t(0) ‖ t(max(i−1, 0))]`.
pub fn sparse_causal_context(t: Tensor<3>, frames: usize) -> Tensor<3> {
    let [n, l, c] = t.dims();
    let videos = n / frames;
    let device = t.device();
    let t = t.reshape([videos, frames, l, c]);
    let first = t.clone().narrow(1, 0, 1).expand([videos, frames, l, c]);
    let previous: Vec<i64> = (0..frames as i64).map(|i| (i - 1).max(0)).collect();
    let previous = Tensor::<1, Int>::from_data(TensorData::new(previous, [frames]), &device);
    let previous = t.select(1, previous);
    Tensor::cat(vec![first, previous], 2).reshape([n, 2 * l, c])
}

/// `[(B·F), L, C]` → `[(B·L), F, C]`.
pub fn frames_to_sequence(x: Tensor<3>, frames: usize) -> Tensor<3> {
    let [n, l, c] = x.dims();
    let videos = n / frames;
    x.reshape([videos, frames, l, c])
        .swap_dims(1, 2)
        .reshape([videos * l, frames, c])
}

/// `[(B·L), F, C]` → `[(B·F), L, C]`, the inverse of [`frames_to_sequence`].
pub fn sequence_to_frames(x: Tensor<3>, videos: usize) -> Tensor<3> {
    let [m, frames, c] = x.dims();
    let l = m / videos;
    x.reshape([videos, l, frames, c])
        .swap_dims(1, 2)
        .reshape([videos * frames, l, c])
}

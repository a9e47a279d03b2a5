//! Floating-point operations of the UNet's steps and of the attention kernels, counted from
//! shapes (a multiply-add is two): what `tav bench` divides by time, so that on a GPU its
//! `flop_per_s` reads directly as a fraction of the device's peak.
//!
//! Counted: convolutions, linear layers and attention's two matrix products. Left out (a few
//! percent at SD sizes): norms, activations, softmax, residual sums, the time embedding.

use crate::config::UNetConfig;

/// Text tokens the cross-attention reads (CLIP's context length).
const TEXT_TOKENS: f64 = 77.0;

/// One attention call: `videos` × `frames` frames of `tokens` tokens, `heads` × `head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub videos: usize,
    pub frames: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Temporal (each token against the same token of every frame) or sparse-causal (each
    /// frame against frame 0 and its previous frame: 2·tokens keys).
    pub temporal: bool,
}

impl AttentionShape {
    /// Keys each query row sees.
    pub fn keys(&self) -> usize {
        if self.temporal {
            self.frames
        } else {
            2 * self.tokens
        }
    }

    /// Forward: QKᵀ and PV, 2·head_dim each per (query, key).
    pub fn forward_flop(&self) -> f64 {
        let rows = (self.videos * self.frames * self.tokens * self.heads) as f64;
        rows * self.keys() as f64 * 4.0 * self.head_dim as f64
    }

    /// Backward as FlashAttention-2 counts it: QKᵀ again, then dV, dP, dQ and dK, five
    /// products against the forward's two.
    pub fn backward_flop(&self) -> f64 {
        2.5 * self.forward_flop()
    }
}

fn conv(c_in: usize, c_out: usize, kernel: usize, pixels: usize) -> f64 {
    2.0 * (c_in * c_out * kernel * kernel * pixels) as f64
}

fn linear(c_in: usize, c_out: usize, rows: usize) -> f64 {
    2.0 * (c_in * c_out * rows) as f64
}

fn resnet(c_in: usize, c_out: usize, pixels: usize) -> f64 {
    let shortcut = if c_in == c_out {
        0.0
    } else {
        conv(c_in, c_out, 1, pixels)
    };
    conv(c_in, c_out, 3, pixels) + conv(c_out, c_out, 3, pixels) + shortcut
}

/// One video transformer (projections in and out, one block) over `frames` frames of
/// `tokens` tokens.
fn transformer(cfg: &UNetConfig, c: usize, heads: usize, frames: usize, tokens: usize) -> f64 {
    let rows = frames * tokens;
    let attention = |temporal| AttentionShape {
        videos: 1,
        frames,
        tokens,
        heads,
        head_dim: c / heads,
        temporal,
    };
    let projections = 2.0 * linear(c, c, rows);
    let sparse_causal = 4.0 * linear(c, c, rows) + attention(false).forward_flop();
    let cross = 2.0 * linear(c, c, rows)
        + 2.0 * linear(cfg.cross_attention_dim, c, frames) * TEXT_TOKENS
        + rows as f64 * TEXT_TOKENS * 4.0 * c as f64;
    let feed_forward = linear(c, 8 * c, rows) + linear(4 * c, c, rows);
    let temporal = 4.0 * linear(c, c, rows) + attention(true).forward_flop();
    projections + sparse_causal + cross + feed_forward + temporal
}

/// A UNet forward over one video of `frames` frames of `latent_h × latent_w` latents, as
/// `unet.rs` builds the model from `cfg`.
pub fn unet_forward(cfg: &UNetConfig, frames: usize, latent_h: usize, latent_w: usize) -> f64 {
    let ch = &cfg.block_out_channels;
    let blocks = ch.len();
    let pixels = |level: usize| frames * (latent_h >> level) * (latent_w >> level);
    let tokens = |level: usize| (latent_h >> level) * (latent_w >> level);
    let has_attention = UNetConfig::has_cross_attention;
    let mut total = conv(cfg.in_channels, ch[0], 3, pixels(0));
    let mut output = ch[0];
    for (i, kind) in cfg.down_block_types.iter().enumerate() {
        let input = output;
        output = ch[i];
        for l in 0..cfg.layers_per_block {
            total += resnet(if l == 0 { input } else { output }, output, pixels(i));
            if has_attention(kind) {
                let heads = cfg.attention_head_dim.get(i);
                total += transformer(cfg, output, heads, frames, tokens(i));
            }
        }
        if i + 1 < blocks {
            total += conv(output, output, 3, pixels(i + 1));
        }
    }
    let top = ch[blocks - 1];
    let deepest = blocks - 1;
    total += 2.0 * resnet(top, top, pixels(deepest));
    total += transformer(
        cfg,
        top,
        cfg.attention_head_dim.get(deepest),
        frames,
        tokens(deepest),
    );
    let reversed: Vec<usize> = ch.iter().rev().copied().collect();
    let mut output = reversed[0];
    for (i, kind) in cfg.up_block_types.iter().enumerate() {
        let level = blocks - 1 - i;
        let previous = output;
        output = reversed[i];
        let input = reversed[(i + 1).min(blocks - 1)];
        let layers = cfg.layers_per_block + 1;
        for l in 0..layers {
            let skip = if l + 1 == layers { input } else { output };
            let c_in = if l == 0 { previous } else { output };
            total += resnet(c_in + skip, output, pixels(level));
            if has_attention(kind) {
                let heads = cfg.attention_head_dim.get(level);
                total += transformer(cfg, output, heads, frames, tokens(level));
            }
        }
        if i + 1 < blocks {
            // Upsampled to the next level, then a 3×3 conv there.
            total += conv(output, output, 3, pixels(level - 1));
        }
    }
    total + conv(ch[0], cfg.out_channels, 3, pixels(0))
}

/// A tuning step: the forward, the input gradients through every layer (as many operations
/// again; frozen layers need no weight gradients and the tuned ones are a few percent), and,
/// with recompute, the blocks' forward once more.
pub fn tuning_step(forward: f64, recompute: bool) -> f64 {
    forward * if recompute { 3.0 } else { 2.0 }
}

/// A guided sampling step: the forward at a batch of two.
pub fn sampling_step(forward: f64) -> f64 {
    2.0 * forward
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sparse-causal attention at SD's finest level (4,096 tokens, 8 × 40), 24 frames:
    /// 24·8·4096 rows × 8192 keys × 160.
    #[test]
    fn attention_counts_both_products_per_query_and_key() {
        let shape = AttentionShape {
            videos: 1,
            frames: 24,
            tokens: 4096,
            heads: 8,
            head_dim: 40,
            temporal: false,
        };
        assert_eq!(shape.forward_flop(), 24.0 * 8.0 * 4096.0 * 8192.0 * 160.0);
        assert_eq!(shape.backward_flop(), 2.5 * shape.forward_flop());
        let temporal = AttentionShape {
            temporal: true,
            ..shape
        };
        assert_eq!(temporal.keys(), 24);
    }

    /// SD v1.5's UNet forward on one 64×64 latent is about 1 TFLOP: the 2D UNet's ≈ 0.8
    /// (≈ 400 G multiply-adds, as commonly quoted) plus sparse-causal attention's second
    /// frame of keys (≈ 0.1 at the finest level alone) and the temporal layers. It grows with
    /// frames, more than linearly through attention, and 4× the pixels cost more than 4×.
    #[test]
    fn sd15_forward_is_about_a_teraflop_per_frame_and_grows_with_shape() {
        let cfg = UNetConfig::sd_v1_5();
        let one = unet_forward(&cfg, 1, 64, 64);
        assert!((8e11..1.2e12).contains(&one), "{one:e}");
        let eight = unet_forward(&cfg, 8, 64, 64);
        assert!(eight > 8.0 * one, "{eight:e} vs {one:e}");
        assert!(eight < 9.0 * one, "{eight:e} vs {one:e}");
        assert!(unet_forward(&cfg, 1, 32, 32) * 4.0 < one);
        assert_eq!(sampling_step(one), 2.0 * one);
        assert_eq!(tuning_step(one, true), 3.0 * one);
    }
}

//! How much memory the plain attention path needs at once for a video, before any of it is
//! allocated. The score matrices of attention grow with the square of the tokens per frame,
//! so they, not the weights, decide whether a size fits. On a GPU an allocation that does not
//! fit fails with an error; on the host (burn's CPU backend) it aborts the process, so the
//! command-line checks this estimate first and says what to reduce.

use crate::config::UNetConfig;

/// A video as the pipeline processes it.
#[derive(Debug, Clone, Copy)]
pub struct VideoShape {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Videos in one UNet batch: 2 under classifier-free guidance.
    pub batch: usize,
}

/// Bytes of the largest attention buffers alive at once on the plain path: the scores and
/// their softmax (f32), for the UNet's sparse-causal self-attention at its finest attention
/// level and for the VAE's mid-block attention (all frames encoded at once).
pub fn largest_attention_bytes(unet: &UNetConfig, vae_downscale: usize, video: VideoShape) -> u64 {
    let latent_tokens =
        (video.height / vae_downscale.max(1)) * (video.width / vae_downscale.max(1));
    let unet_scores = unet
        .down_block_types
        .iter()
        .enumerate()
        .filter(|(_, kind)| kind.starts_with("CrossAttn"))
        .map(|(level, _)| {
            let tokens = (latent_tokens >> (2 * level)) as u64;
            // Each frame's queries against frame 0's and the previous frame's keys.
            (video.batch * video.frames * unet.attention_head_dim.get(level)) as u64
                * tokens
                * 2
                * tokens
        })
        .max()
        .unwrap_or(0);
    // The VAE attends once, over all tokens of its coarsest level (the latent size).
    let vae_scores = video.frames as u64 * (latent_tokens as u64).pow(2);
    2 * 4 * unet_scores.max(vae_scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_at_512_with_24_frames_needs_tens_of_gigabytes() {
        // 4096 tokens per frame, 8 heads, 24 frames, guidance batch 2: 2 · 24 · 8 · 4096 ·
        // 8192 scores, twice, in f32.
        let bytes = largest_attention_bytes(
            &UNetConfig::sd_v1_5(),
            8,
            VideoShape {
                frames: 24,
                height: 512,
                width: 512,
                batch: 2,
            },
        );
        assert_eq!(bytes, 2 * 4 * 2 * 24 * 8 * 4096 * 8192);
    }

    #[test]
    fn memory_grows_with_frames_and_with_the_square_of_tokens() {
        let sd = UNetConfig::sd_v1_5();
        let at = |frames, size| {
            largest_attention_bytes(
                &sd,
                8,
                VideoShape {
                    frames,
                    height: size,
                    width: size,
                    batch: 1,
                },
            )
        };
        assert_eq!(at(16, 256), 2 * at(8, 256));
        assert_eq!(at(8, 512), 16 * at(8, 256));
    }
}

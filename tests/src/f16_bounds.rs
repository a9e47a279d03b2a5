//! Bounds for the f16 paths, from f16's precision and the depth of what is computed in it,
//! not from what one golden set happened to measure.
//!
//! The model of the error: rounding a value to f16 is off by at most the unit roundoff `u`
//! (2^-11), relative, and by `u/√3` on average (uniform over ±u). A layer whose weights are
//! rounded computes sums of terms each off by such an independent rounding, so its output is
//! off norm-wise (‖out−ref‖/‖ref‖, the measure every bound here uses) by about `u/√3`:
//! measured 2.0–2.3e-4 for single convolutions in f16 (`tests/kernels.rs`), against
//! `u/√3` = 2.8e-4. Successive layers' errors are independent, so over a path of `n` rounded
//! layers they add in quadrature: `√n·u/√3`. f16 arithmetic also rounds each layer's input and
//! output: three roundings a layer instead of one. Measured on tiny-a, the UNet with f16
//! weights is at 2.2e-3 against this model's 4.1e-3 for its 212 layers, with f16 arithmetic at
//! 4.8e-3 against 7.1e-3. The bound allows [`MARGIN`] times the model, for non-linearities
//! that magnify an error (softmax's exponent, a norm over a small spread) and for cancellation.
//!
//! Depths are counted from the model's configs (the SD v1 layout: blocks, layers per block,
//! which blocks attend), so a golden set of other widths or depths gets its own bound.

use std::path::Path;

/// f16's unit roundoff: 11 significant bits.
pub const F16_UNIT_ROUNDOFF: f64 = 1.0 / 2048.0;

/// How many times the error model's estimate a bound allows.
pub const MARGIN: f64 = 3.0;

/// The norm-wise relative error allowed after `roundings` successive f16 roundings of whole
/// layers (weights, or activations): `MARGIN · √roundings · u/√3`.
pub fn f16_bound(roundings: usize) -> f64 {
    MARGIN * (roundings.max(1) as f64).sqrt() * F16_UNIT_ROUNDOFF / 3f64.sqrt()
}

/// Roundings per layer: f16 weights alone (arithmetic in f32), or f16 arithmetic too (the
/// layer's input and output are rounded as well).
pub fn roundings_per_layer(f16_arithmetic: bool) -> usize {
    if f16_arithmetic { 3 } else { 1 }
}

/// Mixed-precision tuning's loss and step-0 gradients, taken together: the UNet runs forward
/// and backward in f16 arithmetic, twice its layers at three roundings each.
pub fn mixed_precision_bound(depths: &Depths) -> f64 {
    f16_bound(2 * depths.unet * roundings_per_layer(true))
}

/// Each tensor's step-0 gradient in mixed precision, over [`mixed_precision_bound`]: some
/// tensors' gradients are sums of every token's f16 gradient that mostly cancel (on tiny-a,
/// 5.6e-2 for the last temporal attention's output bias; 1.2e-4 in f32), which magnifies
/// their rounding by the ratio of the terms' size to the sum's; this allows that ratio. The
/// tuned weights after a few steps get the same: AdamW's first steps move each weight by
/// about the learning rate whatever its gradient's size, so the rounding of near-zero
/// gradients shows in them (5.1e-2 on tiny-a).
pub const CANCELLATION: f64 = 4.0;

/// The number of weighted layers on the deepest path through each component of an SD v1.x
/// model folder, as Tune-A-Video inflates it.
#[derive(Debug, Clone, Copy)]
pub struct Depths {
    pub text_encoder: usize,
    pub vae_encoder: usize,
    pub vae_decoder: usize,
    pub unet: usize,
}

/// Layers in sequence in one transformer block of the inflated UNet: projection in; self-,
/// temporal and cross-attention (each its query and output projections in sequence); the
/// feed-forward's two; projection out.
const TRANSFORMER_LAYERS: usize = 1 + 2 + 2 + 2 + 2 + 1;
/// A resnet: two convolutions.
const RESNET_LAYERS: usize = 2;
/// A VAE attention block: query (or key, value) then output projection.
const VAE_ATTENTION_LAYERS: usize = 2;

impl Depths {
    /// Counted from `model/{text_encoder,vae,unet}/config.json`.
    pub fn of_model(model: &Path) -> Self {
        let config = |component: &str| -> serde_json::Value {
            let path = model.join(component).join("config.json");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
        };
        let count = |v: &serde_json::Value, key: &str, component: &str| -> usize {
            v[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{component}/config.json has no {key}"))
                as usize
        };
        let list_len = |v: &serde_json::Value, key: &str, component: &str| -> usize {
            v[key]
                .as_array()
                .unwrap_or_else(|| panic!("{component}/config.json has no {key}"))
                .len()
        };
        let attending = |v: &serde_json::Value, key: &str| -> usize {
            v[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|t| t.as_str().is_some_and(|t| t.contains("CrossAttn")))
                        .count()
                })
                .unwrap_or(0)
        };

        let text = config("text_encoder");
        // Each CLIP layer: attention (query, output) then the MLP's two; the final norm.
        let text_encoder = 4 * count(&text, "num_hidden_layers", "text_encoder");

        let vae = config("vae");
        let blocks = list_len(&vae, "block_out_channels", "vae");
        let per_block = count(&vae, "layers_per_block", "vae");
        // The middle: two resnets around one attention.
        let vae_middle = 2 * RESNET_LAYERS + VAE_ATTENTION_LAYERS;
        // conv_in, the down blocks' resnets and downsamplers, the middle, conv_out, quant_conv.
        let vae_encoder =
            1 + blocks * per_block * RESNET_LAYERS + (blocks - 1) + vae_middle + 1 + 1;
        // post_quant_conv, conv_in, the middle, the up blocks (one resnet more each) and
        // upsamplers, conv_out.
        let vae_decoder =
            1 + 1 + vae_middle + blocks * (per_block + 1) * RESNET_LAYERS + (blocks - 1) + 1;

        let unet = config("unet");
        let blocks = list_len(&unet, "block_out_channels", "unet");
        let per_block = count(&unet, "layers_per_block", "unet");
        let down_attending = attending(&unet, "down_block_types");
        let up_attending = attending(&unet, "up_block_types");
        let down = blocks * per_block * RESNET_LAYERS
            + down_attending * per_block * TRANSFORMER_LAYERS
            + (blocks - 1);
        let middle = 2 * RESNET_LAYERS + TRANSFORMER_LAYERS;
        let up = blocks * (per_block + 1) * RESNET_LAYERS
            + up_attending * (per_block + 1) * TRANSFORMER_LAYERS
            + (blocks - 1);
        // conv_in, down, middle, up, conv_out.
        let unet = 1 + down + middle + up + 1;

        Self {
            text_encoder,
            vae_encoder,
            vae_decoder,
            unet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_grows_with_depth_as_independent_errors_do() {
        // One rounded layer: three times u/√3.
        assert!((f16_bound(1) - 3.0 * F16_UNIT_ROUNDOFF / 3f64.sqrt()).abs() < 1e-12);
        // Four times the layers, twice the bound.
        assert!((f16_bound(400) / f16_bound(100) - 2.0).abs() < 1e-12);
    }
}

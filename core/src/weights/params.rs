//! Parameter counts of the inflated UNet at any config, computed from shapes alone (no
//! weights are read or allocated), e.g. to check SD v1.5's 909,120,004.

use burn::tensor::Device;

use crate::config::UNetConfig;
use crate::error::Result;
use crate::unet::{UNet3D, is_temporal, is_trainable};
use crate::weights::{ParamBuilder, ParamEntry};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    /// All parameters of the 3D UNet.
    pub total: usize,
    /// Those that come from the 2D checkpoint.
    pub from_2d: usize,
    /// The new temporal layers (`norm_temp`, `attn_temp`).
    pub temporal: usize,
    /// What Tune-A-Video tunes (`attn1.to_q`, `attn2.to_q`, `attn_temp`).
    pub trainable: usize,
}

impl ParamCounts {
    pub fn from_entries(entries: &[ParamEntry]) -> Self {
        let size = |e: &ParamEntry| e.shape.iter().product::<usize>();
        let sum = |f: &dyn Fn(&str) -> bool| -> usize {
            entries.iter().filter(|e| f(&e.key)).map(size).sum()
        };
        let total = sum(&|_| true);
        let temporal = sum(&is_temporal);
        Self {
            total,
            from_2d: total - temporal,
            temporal,
            trainable: sum(&is_trainable),
        }
    }
}

/// Every parameter of the 3D UNet for `cfg`: key and reference shape, nothing allocated.
pub fn unet_param_entries(cfg: &UNetConfig, device: &Device) -> Result<Vec<ParamEntry>> {
    let p = ParamBuilder::shapes_only(device);
    UNet3D::load(&p, cfg)?;
    Ok(p.entries())
}

/// Counts of the 3D UNet's parameters for `cfg`.
pub fn unet_param_counts(cfg: &UNetConfig, device: &Device) -> Result<ParamCounts> {
    Ok(ParamCounts::from_entries(&unet_param_entries(cfg, device)?))
}

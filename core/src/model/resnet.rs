//! ResNet blocks and the down/up samplers shared by the UNet and the VAE.
//!
//! In the video UNet, GroupNorm statistics are pooled over all frames of a video, as
//! PyTorch's GroupNorm does on the reference's 5-D tensors; the VAE runs on single images
//! (`frames = 1`).

use crate::model::fused::silu;
use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::layers::{Conv2d, ConvShape, GroupNorm, Linear, upsample_nearest_2x};
use crate::weights::ParamBuilder;

#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

/// Sizes of one ResNet block.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    pub c_in: usize,
    pub c_out: usize,
    /// Width of the time embedding, if the block takes one.
    pub temb: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

impl ResnetBlock {
    pub fn load(p: &ParamBuilder, spec: ResnetSpec) -> Result<Self> {
        let ResnetSpec {
            c_in,
            c_out,
            temb,
            groups,
            eps,
        } = spec;
        Ok(Self {
            norm1: GroupNorm::load(&p.sub("norm1"), groups, c_in, eps)?,
            conv1: Conv2d::load(&p.sub("conv1"), ConvShape::same_3x3(c_in, c_out))?,
            time_emb_proj: match temb {
                Some(t) => Some(Linear::load(&p.sub("time_emb_proj"), t, c_out, true)?),
                None => None,
            },
            norm2: GroupNorm::load(&p.sub("norm2"), groups, c_out, eps)?,
            conv2: Conv2d::load(&p.sub("conv2"), ConvShape::same_3x3(c_out, c_out))?,
            conv_shortcut: if c_in != c_out {
                Some(Conv2d::load(
                    &p.sub("conv_shortcut"),
                    ConvShape::pointwise(c_in, c_out),
                )?)
            } else {
                None
            },
        })
    }

    /// `x` is `[(B·F), C, H, W]`; `temb` is `[B, T]` (one per video, shared by its frames).
    pub fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>, frames: usize) -> Tensor<4> {
        let h = silu(self.norm1.forward_pooled(x.clone(), frames));
        let mut h = self.conv1.forward(h);
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(silu(temb));
            let [b, c] = t.dims();
            let t = t
                .reshape([b, 1, c])
                .expand([b, frames, c])
                .reshape([b * frames, c, 1, 1]);
            h = h + t;
        }
        let h = silu(self.norm2.forward_pooled(h, frames));
        let h = self.conv2.forward(h);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// Stride-2 convolution (`downsamplers.0.conv`).
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    /// The VAE encoder pads only bottom/right (padding 0 + `F.pad(0,1,0,1)`).
    pub pad_end: bool,
}

impl Downsample {
    pub fn load(p: &ParamBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(&p.sub("conv"), ConvShape::downsample(channels, padding))?,
            pad_end: padding == 0,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.pad_end {
            self.conv.forward_pad_end(x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest 2× upsampling then a 3×3 convolution (`upsamplers.0.conv`).
#[derive(Module, Debug)]
pub struct Upsample {
    pub conv: Conv2d,
}

impl Upsample {
    pub fn load(p: &ParamBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(&p.sub("conv"), ConvShape::same_3x3(channels, channels))?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(upsample_nearest_2x(x))
    }
}

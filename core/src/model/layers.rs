//! The small building blocks every component uses: linear, per-frame 2D convolution,
//! group norm (per frame or pooled over frames) and layer norm.

use burn::module::{Module, Param};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

use crate::error::Result;
use crate::kernels::ConvSpec;
use crate::model::fused::standardize;
use crate::weights::{Layout, ParamBuilder};

/// A parameter in the compute dtype `like`: weights may be stored in f16 while arithmetic is
/// f32. Frozen f16 weights are widened by tav's own kernel, which needs no `shader-f16`, so
/// adapters without f16 arithmetic (SwiftShader, some integrated GPUs) still store them in f16.
pub fn in_dtype_of<const D: usize>(param: Tensor<D>, like: DType) -> Tensor<D> {
    if param.dtype() == like {
        param
    } else if param.dtype() == DType::F16
        && like == DType::F32
        && !param.is_require_grad()
        && crate::kernels::runs_wgsl(&param.device())
    {
        crate::kernels::widen_f16_to_f32(param)
    } else {
        param.cast(like)
    }
}

/// `x` in a dtype fit for long sums: f16 activations are widened to f32, since sums over
/// thousands of values lose precision or overflow in f16.
pub fn statistics_dtype<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F16 {
        x.cast(DType::F32)
    } else {
        x
    }
}

/// `y = x W + b` with PyTorch's weight names (`weight`, `bias`).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]` (PyTorch stores `[out, in]`; transposed on load).
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    pub fn load(p: &ParamBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: p.param("weight", [d_out, d_in], Layout::LinearWeight)?,
            bias: if bias {
                Some(p.param("bias", [d_out], Layout::Same)?)
            } else {
                None
            },
        })
    }

    /// Width of the inputs.
    pub fn in_features(&self) -> usize {
        self.weight.lazy_shape()[0]
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let weight = self.weight.val();
        if dtype == DType::F16 && weight.dtype() == DType::F32 {
            // A tuned layer (kept f32 under `--f16`) computes in f32: in tuning its weight's
            // gradient, a sum over every token, is accumulated in f32; and the forward is the
            // same whether or not autodiff tracks it (recompute runs it both ways).
            return self.forward(x.cast(DType::F32)).cast(DType::F16);
        }
        burn::tensor::module::linear(
            x,
            in_dtype_of(self.weight.val(), dtype),
            self.bias.as_ref().map(|b| in_dtype_of(b.val(), dtype)),
        )
    }
}

/// A 2D convolution; video tensors are `[(B·F), C, H, W]`, so this is applied per frame,
/// as the reference's `InflatedConv3d` does.
#[derive(Module, Debug)]
pub struct Conv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    pub stride: usize,
    pub padding: usize,
}

/// A square convolution's channels, kernel, stride and (equal) padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// 3×3, stride 1, padding 1: the size-keeping convolution of ResNets and the UNet's and
    /// VAE's ends.
    pub fn same_3x3(c_in: usize, c_out: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel: 3,
            stride: 1,
            padding: 1,
        }
    }

    /// 1×1: a per-pixel linear map (shortcuts, projections, the VAE's quant convs).
    pub fn pointwise(c_in: usize, c_out: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel: 1,
            stride: 1,
            padding: 0,
        }
    }

    /// 3×3 at stride 2: halves each side (the UNet's padding 1; the VAE encoder's 0, with
    /// its own asymmetric padding).
    pub fn downsample(channels: usize, padding: usize) -> Self {
        Self {
            c_in: channels,
            c_out: channels,
            kernel: 3,
            stride: 2,
            padding,
        }
    }
}

impl Conv2d {
    pub fn load(p: &ParamBuilder, shape: ConvShape) -> Result<Self> {
        let ConvShape {
            c_in,
            c_out,
            kernel,
            stride,
            padding,
        } = shape;
        Ok(Self {
            weight: p.param("weight", [c_out, c_in, kernel, kernel], Layout::Same)?,
            bias: p.param("bias", [c_out], Layout::Same)?,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.padding;
        self.apply(
            x,
            ConvSpec {
                stride: self.stride,
                padding: [p, p, p, p],
            },
        )
    }

    fn apply(&self, x: Tensor<4>, spec: ConvSpec) -> Tensor<4> {
        let dtype = x.dtype();
        // burn's direct convolution sums in its input's dtype: with f16 that loses ~1e-2 over
        // SD's 3×3×1280 sums. tav's convolution kernel sums f16 in f32 without an f32 copy
        // (frozen weights, a WGSL device); elsewhere f16 activations are convolved in f32.
        if dtype == DType::F16 && !self.weight.val().is_require_grad() {
            let weight = in_dtype_of(self.weight.val(), dtype);
            if crate::kernels::conv2d_supported(&x, &weight, spec) {
                let bias = in_dtype_of(self.bias.val(), dtype);
                return crate::kernels::conv2d_f32_sum(x, weight, bias, spec);
            }
        }
        let x = statistics_dtype(x);
        let compute = x.dtype();
        let [top, left, bottom, right] = spec.padding;
        let options = ConvOptions::new_with_padding(
            [spec.stride, spec.stride],
            [(top, bottom), (left, right)],
            [1, 1],
            1,
        );
        conv2d(
            x,
            in_dtype_of(self.weight.val(), compute),
            Some(in_dtype_of(self.bias.val(), compute)),
            options,
        )
        .cast(dtype)
    }

    /// Convolution after zero-padding only the bottom and right by one, as the VAE
    /// encoder's downsampler (`padding=0` plus `F.pad(x, (0, 1, 0, 1))`).
    pub fn forward_pad_end(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(
            x,
            ConvSpec {
                stride: self.stride,
                padding: [0, 0, 1, 1],
            },
        )
    }
}

/// GroupNorm with affine parameters.
#[derive(Module, Debug)]
pub struct GroupNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(p: &ParamBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.param("weight", [channels], Layout::Same)?,
            bias: p.param("bias", [channels], Layout::Same)?,
            groups,
            eps,
        })
    }

    /// Statistics per image of `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_pooled(x, 1)
    }

    /// `x` is `[(B·F), C, H, W]`; statistics are pooled over the `frames` images of each
    /// video, as PyTorch's GroupNorm does on the reference's 5-D `[B, C, F, H, W]` tensors.
    pub fn forward_pooled(&self, x: Tensor<4>, frames: usize) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let videos = n / frames;
        let dtype = x.dtype();
        let grouped =
            statistics_dtype(x).reshape([videos, frames, self.groups, (c / self.groups) * h * w]);
        let normed = standardize(grouped, &[1, 3], self.eps);
        let normed = normed.reshape([n, c, h, w]).cast(dtype);
        let gamma = in_dtype_of(self.weight.val(), dtype).reshape([1, c, 1, 1]);
        let beta = in_dtype_of(self.bias.val(), dtype).reshape([1, c, 1, 1]);
        normed * gamma + beta
    }
}

/// LayerNorm over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(p: &ParamBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.param("weight", [dim], Layout::Same)?,
            bias: p.param("bias", [dim], Layout::Same)?,
            eps,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let normed = standardize(statistics_dtype(x), &[D - 1], self.eps).cast(dtype);
        let mut shape = [1usize; D];
        shape[D - 1] = self.weight.dims()[0];
        normed * in_dtype_of(self.weight.val(), dtype).reshape(shape)
            + in_dtype_of(self.bias.val(), dtype).reshape(shape)
    }
}

/// Nearest-neighbour 2× upsampling of `[N, C, H, W]` (exact, by repetition).
pub fn upsample_nearest_2x(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1])
        .expand([n, c, h, 2, w, 2])
        .reshape([n, c, 2 * h, 2 * w])
}

//! The VAE (diffusers' `AutoencoderKL`): images to the posterior over latents, and latents
//! back to images. Frames go through it independently.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use crate::attention::multi_head;
use crate::config::VaeConfig;
use crate::error::{Result, TavError};
use crate::layers::{Conv2d, ConvShape, GroupNorm, Linear};
use crate::limits::DeviceLimits;
use crate::progress::{Event, Phase, Progress};
use crate::resnet::{Downsample, ResnetBlock, ResnetSpec, Upsample};
use crate::weights::ParamBuilder;

const VAE_EPS: f64 = 1e-6;

/// The VAE's single-head self-attention over pixels of the mid block. Checkpoints name its
/// layers `to_q/to_k/to_v/to_out.0` (new) or `query/key/value/proj_attn` (old); both load.
#[derive(Module, Debug)]
pub struct VaeAttention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
}

impl VaeAttention {
    pub fn load(p: &ParamBuilder, channels: usize, groups: usize) -> Result<Self> {
        let old_names = !p.has("to_q.weight") && p.has("query.weight");
        let [q, k, v, o] = if old_names {
            ["query", "key", "value", "proj_attn"]
        } else {
            ["to_q", "to_k", "to_v", "to_out.0"]
        };
        Ok(Self {
            group_norm: GroupNorm::load(&p.sub("group_norm"), groups, channels, VAE_EPS)?,
            to_q: Linear::load(&p.sub(q), channels, channels, true)?,
            to_k: Linear::load(&p.sub(k), channels, channels, true)?,
            to_v: Linear::load(&p.sub(v), channels, channels, true)?,
            to_out: Linear::load(&p.sub(o), channels, channels, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let tokens = self
            .group_norm
            .forward(x.clone())
            .reshape([n, c, h * w])
            .swap_dims(1, 2);
        let q = self.to_q.forward(tokens.clone());
        let k = self.to_k.forward(tokens.clone());
        let v = self.to_v.forward(tokens);
        let out = self.to_out.forward(multi_head(q, k, v, 1, None));
        out.swap_dims(1, 2).reshape([n, c, h, w]) + x
    }
}

/// ResNet, attention, ResNet.
#[derive(Module, Debug)]
pub struct VaeMidBlock {
    pub resnet_0: ResnetBlock,
    pub attention: VaeAttention,
    pub resnet_1: ResnetBlock,
}

impl VaeMidBlock {
    fn load(p: &ParamBuilder, channels: usize, groups: usize) -> Result<Self> {
        let spec = resnet_spec(channels, channels, groups);
        Ok(Self {
            resnet_0: ResnetBlock::load(&p.sub("resnets.0"), spec)?,
            attention: VaeAttention::load(&p.sub("attentions.0"), channels, groups)?,
            resnet_1: ResnetBlock::load(&p.sub("resnets.1"), spec)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnet_0.forward(x, None, 1);
        let x = self.attention.forward(x);
        self.resnet_1.forward(x, None, 1)
    }
}

fn resnet_spec(c_in: usize, c_out: usize, groups: usize) -> ResnetSpec {
    ResnetSpec {
        c_in,
        c_out,
        temb: None,
        groups,
        eps: VAE_EPS,
    }
}

#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub resnets: Vec<ResnetBlock>,
    pub downsampler: Option<Downsample>,
}

#[derive(Module, Debug)]
pub struct DecoderBlock {
    pub resnets: Vec<ResnetBlock>,
    pub upsampler: Option<Upsample>,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<EncoderBlock>,
    pub mid_block: VaeMidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: VaeMidBlock,
    pub up_blocks: Vec<DecoderBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// The approximate posterior `q(z | x)`: a diagonal Gaussian per latent cell.
#[derive(Debug, Clone)]
pub struct Posterior {
    pub mean: Tensor<4>,
    /// Clamped to [-30, 20], as the reference does.
    pub logvar: Tensor<4>,
}

impl Posterior {
    /// `mean + exp(logvar / 2) · eps`, with `eps` a standard-normal draw of the same shape.
    pub fn sample(&self, eps: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.logvar.clone().mul_scalar(0.5).exp() * eps
    }
}

#[derive(Module, Debug)]
pub struct Vae {
    pub encoder: Encoder,
    pub quant_conv: Conv2d,
    pub post_quant_conv: Conv2d,
    pub decoder: Decoder,
    pub latent_channels: usize,
    pub in_channels: usize,
    pub downscale: usize,
    pub scaling_factor: f64,
    /// Channels of each level (`block_out_channels`): what sizes the activations.
    #[module(skip)]
    pub block_out_channels: Vec<usize>,
}

impl Vae {
    pub fn load(p: &ParamBuilder, cfg: &VaeConfig) -> Result<Self> {
        cfg.validate("vae/config.json")?;
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let latent = cfg.latent_channels;
        let blocks = ch.len();

        let ep = p.sub("encoder");
        let mut down_blocks = Vec::new();
        let mut output = ch[0];
        for (i, &width) in ch.iter().enumerate() {
            let input = output;
            output = width;
            let bp = ep.sub(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|l| {
                    let c_in = if l == 0 { input } else { output };
                    ResnetBlock::load(
                        &bp.sub(format!("resnets.{l}")),
                        resnet_spec(c_in, output, groups),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = if i + 1 < blocks {
                Some(Downsample::load(&bp.sub("downsamplers.0"), output, 0)?)
            } else {
                None
            };
            down_blocks.push(EncoderBlock {
                resnets,
                downsampler,
            });
        }
        let top = ch[blocks - 1];
        let encoder = Encoder {
            conv_in: Conv2d::load(
                &ep.sub("conv_in"),
                ConvShape::same_3x3(cfg.in_channels, ch[0]),
            )?,
            down_blocks,
            mid_block: VaeMidBlock::load(&ep.sub("mid_block"), top, groups)?,
            conv_norm_out: GroupNorm::load(&ep.sub("conv_norm_out"), groups, top, VAE_EPS)?,
            conv_out: Conv2d::load(&ep.sub("conv_out"), ConvShape::same_3x3(top, 2 * latent))?,
        };

        let dp = p.sub("decoder");
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        let mut output = reversed[0];
        for (i, &width) in reversed.iter().enumerate() {
            let previous = output;
            output = width;
            let bp = dp.sub(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|l| {
                    let c_in = if l == 0 { previous } else { output };
                    ResnetBlock::load(
                        &bp.sub(format!("resnets.{l}")),
                        resnet_spec(c_in, output, groups),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i + 1 < blocks {
                Some(Upsample::load(&bp.sub("upsamplers.0"), output)?)
            } else {
                None
            };
            up_blocks.push(DecoderBlock { resnets, upsampler });
        }
        let decoder = Decoder {
            conv_in: Conv2d::load(&dp.sub("conv_in"), ConvShape::same_3x3(latent, top))?,
            mid_block: VaeMidBlock::load(&dp.sub("mid_block"), top, groups)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&dp.sub("conv_norm_out"), groups, ch[0], VAE_EPS)?,
            conv_out: Conv2d::load(
                &dp.sub("conv_out"),
                ConvShape::same_3x3(ch[0], cfg.out_channels),
            )?,
        };

        Ok(Self {
            encoder,
            quant_conv: Conv2d::load(
                &p.sub("quant_conv"),
                ConvShape::pointwise(2 * latent, 2 * latent),
            )?,
            post_quant_conv: Conv2d::load(
                &p.sub("post_quant_conv"),
                ConvShape::pointwise(latent, latent),
            )?,
            decoder,
            latent_channels: latent,
            in_channels: cfg.in_channels,
            downscale: cfg.downscale(),
            scaling_factor: cfg.scaling_factor,
            block_out_channels: ch.clone(),
        })
    }

    /// Images `[N, 3, H, W]` in [-1, 1] to the posterior over unscaled latents.
    pub fn encode(&self, pixels: Tensor<4>) -> Result<Posterior> {
        let [_, c, h, w] = pixels.dims();
        if c != self.in_channels {
            return Err(TavError::InvalidInput(format!(
                "the VAE takes {} channels, the frames have {c}",
                self.in_channels
            )));
        }
        if h % self.downscale != 0 || w % self.downscale != 0 {
            return Err(TavError::InvalidInput(format!(
                "frame size {w}×{h} is not a multiple of the VAE's downscale {}",
                self.downscale
            )));
        }
        let e = &self.encoder;
        let mut x = e.conv_in.forward(pixels);
        for block in &e.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None, 1);
            }
            if let Some(down) = &block.downsampler {
                x = down.forward(x);
            }
        }
        let x = e.mid_block.forward(x);
        let x = e.conv_out.forward(silu(e.conv_norm_out.forward(x)));
        let moments = self.quant_conv.forward(x);
        let [mean, logvar] = moments.chunk(2, 1).try_into().expect("two halves");
        Ok(Posterior {
            mean,
            logvar: logvar.clamp(-30.0, 20.0),
        })
    }

    /// Unscaled latents `[N, C, h, w]` to images `[N, 3, H, W]` (not clamped).
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let x = self.post_quant_conv.forward(latents);
        let mut x = d.mid_block.forward(d.conv_in.forward(x));
        for block in &d.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None, 1);
            }
            if let Some(up) = &block.upsampler {
                x = up.forward(x);
            }
        }
        d.conv_out.forward(silu(d.conv_norm_out.forward(x)))
    }
}

/// Sizes of one frame's activations, known before anything is allocated.
impl Vae {
    /// Elements of the largest tensor one `height`×`width` frame makes in the encoder: the
    /// widest activation of any level (a downsampler's padded input included) or the
    /// mid-block attention's scores (one head, tokens² at the coarsest level).
    pub fn encoder_frame_elements(&self, height: usize, width: usize) -> u64 {
        let ch = &self.block_out_channels;
        let mut largest = (self.in_channels.max(ch[0]) * height * width) as u64;
        let mut input = ch[0];
        for (level, &c) in ch.iter().enumerate() {
            let (h, w) = (height >> level, width >> level);
            largest = largest.max((input.max(c) * h * w) as u64);
            if level + 1 < ch.len() {
                largest = largest.max((c * (h + 1) * (w + 1)) as u64);
            }
            input = c;
        }
        largest.max(self.mid_scores(height, width))
    }

    /// Elements of the largest tensor one frame makes in the decoder: the widest activation
    /// of any level (each upsampler's output at the next level's size) or the mid-block
    /// attention's scores.
    pub fn decoder_frame_elements(&self, height: usize, width: usize) -> u64 {
        let ch = &self.block_out_channels;
        let levels = ch.len();
        let mut largest = 0u64;
        let mut previous = ch[levels - 1];
        for (i, &c) in ch.iter().rev().enumerate() {
            let level = levels - 1 - i;
            let (h, w) = (height >> level, width >> level);
            largest = largest.max((previous.max(c) * h * w) as u64);
            if level > 0 {
                largest = largest.max((c * (h * 2) * (w * 2)) as u64);
            }
            previous = c;
        }
        largest.max(self.mid_scores(height, width))
    }

    fn mid_scores(&self, height: usize, width: usize) -> u64 {
        let coarsest = self.block_out_channels.len() - 1;
        (((height >> coarsest) * (width >> coarsest)) as u64).pow(2)
    }

    /// How many `height`×`width` frames to encode (or decode) at once so that no tensor
    /// exceeds the device's largest buffer; refuses a frame size that cannot fit even alone.
    pub fn frames_per_chunk(
        &self,
        height: usize,
        width: usize,
        frames: usize,
        bytes_per_value: usize,
        limits: &DeviceLimits,
    ) -> Result<usize> {
        let per_frame = self
            .encoder_frame_elements(height, width)
            .max(self.decoder_frame_elements(height, width))
            * bytes_per_value as u64;
        limits.items_per_buffer(
            per_frame,
            frames,
            &format!("the VAE at {width}×{height}"),
            "reduce --width/--height",
        )
    }

    /// Frames `[F, 3, H, W]` in [-1, 1] to the posterior, encoded a chunk of frames at a time
    /// (each frame is encoded alone by the reference too, so chunks change nothing).
    pub fn encode_frames(
        &self,
        pixels: Tensor<4>,
        limits: &DeviceLimits,
        progress: Progress,
    ) -> Result<Posterior> {
        let [frames, _, h, w] = pixels.dims();
        let chunk = self.frames_per_chunk(h, w, frames, pixels.dtype().size(), limits)?;
        let (mut means, mut logvars) = (Vec::new(), Vec::new());
        let mut done = 0;
        while done < frames {
            let n = chunk.min(frames - done);
            let part = self.encode(pixels.clone().narrow(0, done, n))?;
            means.push(part.mean);
            logvars.push(part.logvar);
            done += n;
            progress(Event {
                phase: Phase::Encode,
                step: done,
                total: frames,
                loss: None,
            });
        }
        Ok(Posterior {
            mean: Tensor::cat(means, 0),
            logvar: Tensor::cat(logvars, 0),
        })
    }
}

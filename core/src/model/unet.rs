//! Tune-A-Video's 3D UNet, inflated from a Stable Diffusion 2D UNet checkpoint: the same
//! weights, applied per frame, with sparse-causal self-attention and a new temporal
//! attention layer in every transformer block.
//!
//! Video tensors inside are frame-major, `[(B·F), C, H, W]`; the public interface uses the
//! reference's `[B, C, F, H, W]`.

use std::collections::HashSet;
use std::rc::Rc;

use crate::model::fused::silu;
use burn::module::{Module, ParamId};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::config::UNetConfig;
use crate::draws::SeededRng;
use crate::error::{Result, TavError};
use crate::layers::{Conv2d, ConvShape, GroupNorm, Linear};
use crate::recompute::recompute;
use crate::resnet::{Downsample, ResnetBlock, ResnetSpec, Upsample};
use crate::transformer::{Transformer3D, VideoAttentionOptions};
use crate::weights::{HostTensor, ParamBuilder, ParamEntry};

/// The modules Tune-A-Video tunes: key fragments of the trainable parameters.
pub const TRAINABLE_MODULES: [&str; 3] = ["attn1.to_q", "attn2.to_q", "attn_temp"];

/// Whether the parameter `key` is tuned by the method.
pub fn is_trainable(key: &str) -> bool {
    TRAINABLE_MODULES
        .iter()
        .any(|m| key.contains(&format!(".{m}.")))
}

/// Whether `key` belongs to the temporal layers that inflation adds.
pub fn is_temporal(key: &str) -> bool {
    key.contains(".attn_temp.") || key.contains(".norm_temp.")
}

/// Initial values of the new temporal layers, as the reference creates them: PyTorch's
/// default Linear init (uniform ±1/√fan_in), `attn_temp.to_out.0.weight` zero, LayerNorm
/// ones and zeros. Seeded per key, so the values do not depend on creation order.
pub fn temporal_init(seed: u64) -> crate::weights::Fallback {
    Rc::new(move |key: &str, shape: &[usize]| {
        if !is_temporal(key) {
            return None;
        }
        let n: usize = shape.iter().product();
        let data = if key.contains(".norm_temp.") {
            vec![if key.ends_with(".weight") { 1.0 } else { 0.0 }; n]
        } else if key.ends_with("attn_temp.to_out.0.weight") {
            vec![0.0; n]
        } else {
            // Linear weight [out, in] or bias [out]: the bound uses fan_in of the layer,
            // which for a bias is unknown here; every temporal linear is dim → dim.
            let fan_in = if shape.len() == 2 { shape[1] } else { shape[0] };
            let bound = 1.0 / (fan_in as f32).sqrt();
            SeededRng::for_stream(seed, key).uniform_vec(n, -bound, bound)
        };
        Some(HostTensor::new(shape.to_vec(), data))
    })
}

/// `time_embedding`: linear_1, SiLU, linear_2.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

/// One down block: ResNets (each followed by a transformer in cross-attention blocks),
/// then an optional stride-2 downsampler.
#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock>,
    pub attentions: Vec<Transformer3D>,
    pub downsampler: Option<Downsample>,
}

#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock>,
    pub attentions: Vec<Transformer3D>,
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock>,
    pub attentions: Vec<Transformer3D>,
    pub upsampler: Option<Upsample>,
}

/// The inflated 3D UNet.
#[derive(Module, Debug)]
pub struct UNet3D {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    /// Every parameter's reference key, shape and id, in creation order.
    #[module(skip)]
    pub params: Vec<ParamEntry>,
    pub base_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: usize,
    pub in_channels: usize,
    /// Per level, the widest activation's channels (an up block's input concatenated with
    /// its skip): sizes the largest tensor of a forward pass before it runs.
    #[module(skip)]
    pub widest_channels: Vec<usize>,
}

struct Widths<'c> {
    cfg: &'c UNetConfig,
    temb: usize,
}

impl Widths<'_> {
    fn resnet(&self, c_in: usize, c_out: usize) -> ResnetSpec {
        ResnetSpec {
            c_in,
            c_out,
            temb: Some(self.temb),
            groups: self.cfg.norm_num_groups,
            eps: self.cfg.norm_eps,
        }
    }

    fn transformer(
        &self,
        p: &ParamBuilder,
        channels: usize,
        heads: usize,
    ) -> Result<Transformer3D> {
        Transformer3D::load(
            p,
            channels,
            heads,
            self.cfg.cross_attention_dim,
            self.cfg.norm_num_groups,
            self.cfg.use_linear_projection,
        )
    }
}

impl UNet3D {
    /// The ids of the parameters tuning changes.
    pub fn trainable_ids(&self) -> HashSet<ParamId> {
        self.params
            .iter()
            .filter(|e| is_trainable(&e.key))
            .map(|e| e.id)
            .collect()
    }

    /// The frozen weights stored in f16 (half the memory); the trainable ones stay f32.
    pub fn frozen_weights_to_f16(self, device: &Device) -> Result<Self> {
        let trainable = self.trainable_ids();
        crate::precision::weights_to_f16(self, &trainable, device)
    }

    /// Builds the 3D UNet from `p`, whose source holds the 2D UNet's weights (and, where
    /// given, temporal weights); missing temporal weights come from `p`'s fallback.
    pub fn load(p: &ParamBuilder, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate("unet/config.json")?;
        let first_entry = p.entries().len();
        let ch = &cfg.block_out_channels;
        let blocks = ch.len();
        let temb = ch[0] * 4;
        let w = Widths { cfg, temb };

        let mut down_blocks = Vec::with_capacity(blocks);
        let mut output = ch[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let input = output;
            output = ch[i];
            let bp = p.sub(format!("down_blocks.{i}"));
            let cross = UNetConfig::has_cross_attention(kind);
            let heads = cfg.attention_head_dim.get(i);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for l in 0..cfg.layers_per_block {
                let c_in = if l == 0 { input } else { output };
                resnets.push(ResnetBlock::load(
                    &bp.sub(format!("resnets.{l}")),
                    w.resnet(c_in, output),
                )?);
                if cross {
                    attentions.push(w.transformer(
                        &bp.sub(format!("attentions.{l}")),
                        output,
                        heads,
                    )?);
                }
            }
            let downsampler = if i + 1 < blocks {
                Some(Downsample::load(
                    &bp.sub("downsamplers.0"),
                    output,
                    cfg.downsample_padding,
                )?)
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }

        let top = ch[blocks - 1];
        let mp = p.sub("mid_block");
        let mid_heads = cfg.attention_head_dim.get(blocks - 1);
        let mid_block = MidBlock {
            resnets: vec![
                ResnetBlock::load(&mp.sub("resnets.0"), w.resnet(top, top))?,
                ResnetBlock::load(&mp.sub("resnets.1"), w.resnet(top, top))?,
            ],
            attentions: vec![w.transformer(&mp.sub("attentions.0"), top, mid_heads)?],
        };

        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(blocks);
        let mut output = reversed[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let previous = output;
            output = reversed[i];
            let input = reversed[(i + 1).min(blocks - 1)];
            let bp = p.sub(format!("up_blocks.{i}"));
            let cross = UNetConfig::has_cross_attention(kind);
            let heads = cfg.attention_head_dim.get(blocks - 1 - i);
            let layers = cfg.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for l in 0..layers {
                let skip = if l + 1 == layers { input } else { output };
                let c_in = if l == 0 { previous } else { output };
                resnets.push(ResnetBlock::load(
                    &bp.sub(format!("resnets.{l}")),
                    w.resnet(c_in + skip, output),
                )?);
                if cross {
                    attentions.push(w.transformer(
                        &bp.sub(format!("attentions.{l}")),
                        output,
                        heads,
                    )?);
                }
            }
            let upsampler = if i + 1 < blocks {
                Some(Upsample::load(&bp.sub("upsamplers.0"), output)?)
            } else {
                None
            };
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }

        let conv_in = Conv2d::load(
            &p.sub("conv_in"),
            ConvShape::same_3x3(cfg.in_channels, ch[0]),
        )?;
        let time_embedding = TimestepEmbedding {
            linear_1: Linear::load(&p.sub("time_embedding.linear_1"), ch[0], temb, true)?,
            linear_2: Linear::load(&p.sub("time_embedding.linear_2"), temb, temb, true)?,
        };
        let conv_norm_out = GroupNorm::load(
            &p.sub("conv_norm_out"),
            cfg.norm_num_groups,
            ch[0],
            cfg.norm_eps,
        )?;
        let conv_out = Conv2d::load(
            &p.sub("conv_out"),
            ConvShape::same_3x3(ch[0], cfg.out_channels),
        )?;
        Ok(Self {
            conv_in,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            params: p.entries()[first_entry..].to_vec(),
            base_channels: ch[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            in_channels: cfg.in_channels,
            widest_channels: ch
                .iter()
                .enumerate()
                .map(|(i, &c)| c + ch.get(i + 1).copied().unwrap_or(c))
                .collect(),
        })
    }

    /// Elements of the largest activation of a forward pass over `items` frames (batch ×
    /// frames) of `h`×`w` latents. The feed-forward and attention scores are chunked below
    /// the device's limit, so the widest activation (an up block's concatenation) decides.
    pub fn largest_activation_elements(&self, items: usize, h: usize, w: usize) -> u64 {
        self.widest_channels
            .iter()
            .enumerate()
            .map(|(level, &c)| (items * c * (h >> level) * (w >> level)) as u64)
            .max()
            .unwrap_or(0)
    }

    /// Predicted noise for `sample` (`[B, C, F, H, W]`) at `timesteps` (one per video, or
    /// one for all), conditioned on `context` (`[B, 77, D]`).
    pub fn forward(
        &self,
        sample: Tensor<5>,
        timesteps: &[f64],
        context: Tensor<3>,
        options: VideoAttentionOptions,
    ) -> Result<Tensor<5>> {
        let [b, c, f, h, w] = sample.dims();
        if c != self.in_channels {
            return Err(TavError::InvalidInput(format!(
                "the UNet takes {} latent channels, the sample has {c}",
                self.in_channels
            )));
        }
        if timesteps.len() != 1 && timesteps.len() != b {
            return Err(TavError::InvalidInput(format!(
                "{} timesteps for a batch of {b}",
                timesteps.len()
            )));
        }
        let device = sample.device();
        let out_dtype = sample.dtype();
        let compute = if options.f16_compute {
            DType::F16
        } else {
            out_dtype
        };
        let x = sample
            .swap_dims(1, 2)
            .reshape([b * f, c, h, w])
            .cast(compute);
        let temb = self.time_embed(timesteps, b, &device).cast(compute);
        let [_, m, d] = context.dims();
        let context = context
            .cast(compute)
            .reshape([b, 1, m, d])
            .expand([b, f, m, d])
            .reshape([b * f, m, d]);
        let out = self
            .forward_frames(x, temb, context, f, options)
            .cast(out_dtype);
        let [_, co, _, _] = out.dims();
        Ok(out.reshape([b, f, co, h, w]).swap_dims(1, 2))
    }

    /// The UNet body on frame-major tensors.
    pub fn forward_frames(
        &self,
        x: Tensor<4>,
        temb: Tensor<2>,
        context: Tensor<3>,
        frames: usize,
        options: VideoAttentionOptions,
    ) -> Tensor<4> {
        let mut x = self.conv_in.forward(x);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            for (l, resnet) in block.resnets.iter().enumerate() {
                x = run_resnet(resnet, x, &temb, frames, options);
                if let Some(attn) = block.attentions.get(l) {
                    x = run_transformer(attn, x, &context, frames, options);
                }
                skips.push(x.clone());
            }
            if let Some(down) = &block.downsampler {
                x = down.forward(x);
                skips.push(x.clone());
            }
        }

        x = run_resnet(&self.mid_block.resnets[0], x, &temb, frames, options);
        for (attn, resnet) in self
            .mid_block
            .attentions
            .iter()
            .zip(&self.mid_block.resnets[1..])
        {
            x = run_transformer(attn, x, &context, frames, options);
            x = run_resnet(resnet, x, &temb, frames, options);
        }

        for block in &self.up_blocks {
            for (l, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up-block resnet");
                x = Tensor::cat(vec![x, skip], 1);
                x = run_resnet(resnet, x, &temb, frames, options);
                if let Some(attn) = block.attentions.get(l) {
                    x = run_transformer(attn, x, &context, frames, options);
                }
            }
            if let Some(up) = &block.upsampler {
                let target = skips.last().map(|s| {
                    let [_, _, h, w] = s.dims();
                    [h, w]
                });
                x = upsample_to(up, x, target);
            }
        }

        let x = silu(self.conv_norm_out.forward_pooled(x, frames));
        self.conv_out.forward(x)
    }

    /// Sinusoidal timestep embedding through `time_embedding`: `[B, 4·C0]`.
    pub fn time_embed(&self, timesteps: &[f64], batch: usize, device: &Device) -> Tensor<2> {
        let dim = self.base_channels;
        let rows: Vec<f32> = (0..batch)
            .flat_map(|i| {
                let t = timesteps[if timesteps.len() == 1 { 0 } else { i }];
                sinusoidal_embedding(t, dim, self.flip_sin_to_cos, self.freq_shift)
            })
            .collect();
        let emb = Tensor::<2>::from_data(TensorData::new(rows, [batch, dim]), device);
        let emb = self.time_embedding.linear_1.forward(emb);
        self.time_embedding.linear_2.forward(silu(emb))
    }
}

/// A ResNet block, recomputed in backward when `options.recompute` says so.
fn run_resnet(
    resnet: &ResnetBlock,
    x: Tensor<4>,
    temb: &Tensor<2>,
    frames: usize,
    options: VideoAttentionOptions,
) -> Tensor<4> {
    if !options.recompute {
        return resnet.forward(x, Some(temb.clone()), frames);
    }
    let block =
        |r: &ResnetBlock, x, (temb, frames): (Tensor<2>, usize)| r.forward(x, Some(temb), frames);
    recompute(resnet, x, (temb.clone(), frames), block)
}

/// A video transformer, recomputed in backward when `options.recompute` says so.
fn run_transformer(
    transformer: &Transformer3D,
    x: Tensor<4>,
    context: &Tensor<3>,
    frames: usize,
    options: VideoAttentionOptions,
) -> Tensor<4> {
    if !options.recompute {
        return transformer.forward(x, context.clone(), frames, options);
    }
    let block =
        |t: &Transformer3D,
         x,
         (context, frames, options): (Tensor<3>, usize, VideoAttentionOptions)| {
            t.forward(x, context, frames, options)
        };
    recompute(transformer, x, (context.clone(), frames, options), block)
}

/// Upsample by 2, or to the skip connection's size where the latent size was odd.
fn upsample_to(up: &Upsample, x: Tensor<4>, target: Option<[usize; 2]>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    match target {
        Some(size) if size != [2 * h, 2 * w] => {
            let options = InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size);
            up.conv.forward(interpolate(x, options))
        }
        _ => up.forward(x),
    }
}

/// diffusers' `get_timestep_embedding`, in f32 arithmetic as the reference computes it.
pub fn sinusoidal_embedding(t: f64, dim: usize, flip_sin_to_cos: bool, shift: usize) -> Vec<f32> {
    let half = dim / 2;
    let log_max = -(10000f64.ln()) as f32;
    let mut sin = Vec::with_capacity(half);
    let mut cos = Vec::with_capacity(half);
    for i in 0..half {
        let exponent = (i as f32 * log_max) / (half as f32 - shift as f32);
        let arg = t as f32 * exponent.exp();
        sin.push((arg as f64).sin() as f32);
        cos.push((arg as f64).cos() as f32);
    }
    let mut out = if flip_sin_to_cos {
        [cos, sin].concat()
    } else {
        [sin, cos].concat()
    };
    out.resize(dim, 0.0);
    out
}

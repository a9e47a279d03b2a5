//! Single-file Stable Diffusion v1.x checkpoints in the original (CompVis / A1111) layout:
//! one safetensors file holding `model.diffusion_model.*` (the UNet), `first_stage_model.*`
//! (the VAE) and `cond_stage_model.transformer.*` (CLIP's text tower), as DreamBooth models
//! and community fine-tunes are shipped.
//!
//! The key mapping is diffusers' published conversion
//! (`convert_original_stable_diffusion_to_diffusers.py` / `from_single_file`), written here
//! from its key lists as functions from diffusers' names (what tav's models ask for) to the
//! original ones. Configs are inferred from the tensors' shapes; what shapes cannot tell
//! (head counts, norm groups, the VAE's scaling, the schedule) is SD v1.x's unless a diffusers
//! folder's configs are given.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use burn::tensor::Device;

use crate::clip::ClipTextEncoder;
use crate::config::{ClipConfig, SchedulerConfig, UNetConfig, VaeConfig};
use crate::error::{Result, TavError};
use crate::vae::Vae;
use crate::weights::{HostTensor, ParamBuilder, SafetensorsFile, TensorSource};

/// The UNet's prefix in the original layout.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// The UNet's EMA copy: `model_ema.` + the key after `model.`, dots removed
/// (`model_ema.diffusion_modelinput_blocks00weight`).
pub const EMA_PREFIX: &str = "model_ema.";
/// The VAE's prefix.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// The text encoder's prefix (transformers ≥ 4.x names, with `text_model.`).
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";

/// Tensors of the original layout that are not model parameters: the DDPM schedule the
/// training code kept as buffers, EMA bookkeeping, CLIP's position ids.
const NOT_PARAMETERS: [&str; 15] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "model_ema.decay",
    "model_ema.num_updates",
];

/// The three models of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Unet,
    Vae,
    TextEncoder,
}

/// What the UNet mapping needs to know of the model's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnetLayout {
    pub layers_per_block: usize,
    /// Whether each up block has attentions (its upsampler then comes third, not second).
    pub up_attention: Vec<bool>,
}

impl UnetLayout {
    pub fn of(cfg: &UNetConfig) -> Self {
        Self {
            layers_per_block: cfg.layers_per_block,
            up_attention: cfg
                .up_block_types
                .iter()
                .map(|t| UNetConfig::has_cross_attention(t))
                .collect(),
        }
    }
}

/// A diffusers UNet key → its key in the original layout (with `model.diffusion_model.`).
/// Temporal layers map too (to names no 2D file has, so they fall back to their init).
pub fn unet_key(key: &str, layout: &UnetLayout) -> Option<String> {
    let per_down = layout.layers_per_block + 1;
    // Up blocks have one layer more than down blocks (they take the skip of the downsampler).
    let per_up = layout.layers_per_block + 1;
    let parts: Vec<&str> = key.splitn(5, '.').collect();
    let tail = |from: usize| parts[from..].join(".");
    let mapped = match parts.as_slice() {
        ["time_embedding", "linear_1", ..] => format!("time_embed.0.{}", tail(2)),
        ["time_embedding", "linear_2", ..] => format!("time_embed.2.{}", tail(2)),
        ["conv_in", ..] => format!("input_blocks.0.0.{}", tail(1)),
        ["conv_norm_out", ..] => format!("out.0.{}", tail(1)),
        ["conv_out", ..] => format!("out.2.{}", tail(1)),
        ["down_blocks", i, "resnets", j, rest] => {
            let n = 1 + num(i)? * per_down + num(j)?;
            format!("input_blocks.{n}.0.{}", resnet_name(rest)?)
        }
        ["down_blocks", i, "attentions", j, rest] => {
            let n = 1 + num(i)? * per_down + num(j)?;
            format!("input_blocks.{n}.1.{rest}")
        }
        ["down_blocks", i, "downsamplers", "0", rest] => {
            let n = (num(i)? + 1) * per_down;
            format!("input_blocks.{n}.0.op.{}", rest.strip_prefix("conv.")?)
        }
        ["mid_block", "resnets", j, rest @ ..] => {
            format!(
                "middle_block.{}.{}",
                2 * num(j)?,
                resnet_name(&rest.join("."))?
            )
        }
        ["mid_block", "attentions", "0", rest @ ..] => format!("middle_block.1.{}", rest.join(".")),
        ["up_blocks", i, "resnets", j, rest] => {
            let n = num(i)? * per_up + num(j)?;
            format!("output_blocks.{n}.0.{}", resnet_name(rest)?)
        }
        ["up_blocks", i, "attentions", j, rest] => {
            let n = num(i)? * per_up + num(j)?;
            format!("output_blocks.{n}.1.{rest}")
        }
        ["up_blocks", i, "upsamplers", "0", rest] => {
            let i = num(i)?;
            let n = i * per_up + layout.layers_per_block;
            let slot = if *layout.up_attention.get(i)? { 2 } else { 1 };
            format!("output_blocks.{n}.{slot}.{rest}")
        }
        _ => return None,
    };
    Some(format!("{UNET_PREFIX}{mapped}"))
}

/// A UNet resnet's diffusers layer → the original's (`in_layers` is norm, SiLU, conv;
/// `out_layers` is norm, SiLU, dropout, conv).
fn resnet_name(rest: &str) -> Option<String> {
    let (layer, param) = rest.split_once('.')?;
    let original = match layer {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{original}.{param}"))
}

fn num(s: &str) -> Option<usize> {
    s.parse().ok()
}

/// A diffusers VAE key (new or old attention names) → its key in the original layout (with
/// `first_stage_model.`). `blocks` is the number of decoder up blocks: the original numbers
/// them from the lowest resolution's end.
pub fn vae_key(key: &str, blocks: usize) -> Option<String> {
    let (half, rest) = key.split_once('.')?;
    let mapped = match half {
        "quant_conv" | "post_quant_conv" => key.to_string(),
        "encoder" | "decoder" => format!("{half}.{}", vae_coder_key(rest, blocks)?),
        _ => return None,
    };
    Some(format!("{VAE_PREFIX}{mapped}"))
}

fn vae_coder_key(rest: &str, blocks: usize) -> Option<String> {
    let parts: Vec<&str> = rest.splitn(5, '.').collect();
    Some(match parts.as_slice() {
        ["conv_in" | "conv_out", ..] => rest.to_string(),
        ["conv_norm_out", param] => format!("norm_out.{param}"),
        ["down_blocks", i, "resnets", j, r] => format!("down.{i}.block.{j}.{}", vae_resnet(r)),
        ["down_blocks", i, "downsamplers", "0", r] => format!("down.{i}.downsample.{r}"),
        ["up_blocks", i, "resnets", j, r] => {
            let level = blocks.checked_sub(1 + num(i)?)?;
            format!("up.{level}.block.{j}.{}", vae_resnet(r))
        }
        ["up_blocks", i, "upsamplers", "0", r] => {
            let level = blocks.checked_sub(1 + num(i)?)?;
            format!("up.{level}.upsample.{r}")
        }
        ["mid_block", "resnets", j, r @ ..] => {
            let which = num(j)? + 1;
            format!("mid.block_{which}.{}", vae_resnet(&r.join(".")))
        }
        ["mid_block", "attentions", "0", r @ ..] => {
            let r = r.join(".");
            let (layer, param) = r.rsplit_once('.')?;
            let original = match layer {
                "group_norm" => "norm",
                "to_q" | "query" => "q",
                "to_k" | "key" => "k",
                "to_v" | "value" => "v",
                "to_out.0" | "proj_attn" => "proj_out",
                _ => return None,
            };
            format!("mid.attn_1.{original}.{param}")
        }
        _ => return None,
    })
}

fn vae_resnet(rest: &str) -> String {
    match rest.strip_prefix("conv_shortcut.") {
        Some(param) => format!("nin_shortcut.{param}"),
        None => rest.to_string(),
    }
}

/// Whether a VAE key is one of its attention's projections: 1×1 convolutions
/// (`[C, C, 1, 1]`) in the original, linear layers (`[C, C]`) in diffusers.
pub fn is_vae_attention_projection(key: &str) -> bool {
    key.contains("mid_block.attentions.") && key.ends_with(".weight") && !key.contains("group_norm")
}

/// A diffusers text-encoder key → the original's (`text_model.` under
/// `cond_stage_model.transformer.`).
pub fn clip_key(key: &str) -> String {
    format!("{CLIP_PREFIX}{key}")
}

/// Configs for a single-file checkpoint: inferred, or taken from a diffusers folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Configs {
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub clip: ClipConfig,
    pub scheduler: SchedulerConfig,
}

/// A single-file checkpoint, checked to be SD v1.x, with its key tables.
pub struct SingleFile {
    file: Arc<SafetensorsFile>,
    /// Where each component's tensors are (diffusers key → original key), for the tensors
    /// the file holds.
    tables: [BTreeMap<String, String>; 3],
    /// Keys that map to no parameter of the model (reported, never silently dropped).
    pub unmapped: Vec<String>,
    /// What a user should know: EMA weights left unused, defaults taken.
    pub notes: Vec<String>,
}

/// Whether `path` names a PyTorch pickle (never read: unpickling can run code).
pub fn refuse_pickle(path: &str) -> Result<()> {
    let lower = path.to_lowercase();
    if [".ckpt", ".pt", ".pth", ".bin"]
        .iter()
        .any(|e| lower.ends_with(e))
    {
        return Err(TavError::InvalidInput(format!(
            "{path} is a PyTorch pickle checkpoint: tav never unpickles (loading a pickle can run \
             arbitrary code). Convert it to safetensors first, e.g. `python -c \"import torch, \
             safetensors.torch as st; sd = torch.load('{path}', map_location='cpu', \
             weights_only=True); sd = sd.get('state_dict', sd); st.save_file({{k: v.contiguous() \
             for k, v in sd.items() if hasattr(v, 'contiguous')}}, 'model.safetensors')\"`, \
             or use a .safetensors release of the model"
        )));
    }
    Ok(())
}

/// Key → shape of every tensor of a file (its header only).
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// Refuses a file that is not an SD v1.x single-file checkpoint, naming what it is.
pub fn identify(shapes: &Shapes, path: &str) -> Result<()> {
    let any = |prefix: &str| shapes.keys().any(|k| k.starts_with(prefix));
    let refuse = |what: String| {
        Err(TavError::InvalidInput(format!(
            "{path} is {what}; tav runs Stable Diffusion v1.x checkpoints"
        )))
    };
    if any("conditioner.embedders.") || any(&format!("{UNET_PREFIX}label_emb.")) {
        return refuse(
            "a Stable Diffusion XL checkpoint (conditioner.embedders.*, label_emb)".into(),
        );
    }
    if any("cond_stage_model.model.") {
        return refuse(
            "a Stable Diffusion 2.x checkpoint (its text encoder is OpenCLIP: cond_stage_model.model.*)"
                .into(),
        );
    }
    if !any(UNET_PREFIX) && !any(EMA_PREFIX) {
        if shapes
            .keys()
            .any(|k| k.starts_with("lora_") || k.contains(".lora_"))
        {
            return refuse("a LoRA, not a model: pass it with --lora FILE[:SCALE]".into());
        }
        if any("down_blocks.") || any("encoder.down_blocks.") || any("text_model.") {
            return refuse(
                "one component of a diffusers folder (diffusers key names): pass the whole folder \
                 with --model"
                    .into(),
            );
        }
        return refuse(
            "not a Stable Diffusion checkpoint (no model.diffusion_model.* tensors)".into(),
        );
    }
    if let Some(shape) = unet_shape(shapes, "input_blocks.0.0.weight") {
        match shape.get(1) {
            Some(4) => {}
            Some(9) => {
                return refuse(
                    "an inpainting UNet (9 input channels: latents, mask, masked image)".into(),
                );
            }
            Some(c) => return refuse(format!("a UNet with {c} input channels (SD v1.x takes 4)")),
            None => {}
        }
    }
    if let Some(dim) = first_cross_attention_dim(shapes)
        && dim == 1024
    {
        return refuse("a Stable Diffusion 2.x checkpoint (cross-attention width 1024)".into());
    }
    if !any(VAE_PREFIX) {
        return Err(TavError::InvalidInput(format!(
            "{path} holds no VAE (first_stage_model.*): tav needs a whole SD v1.x checkpoint"
        )));
    }
    if !any(CLIP_PREFIX) {
        return Err(TavError::InvalidInput(format!(
            "{path} holds no text encoder (cond_stage_model.transformer.*): tav needs a whole SD \
             v1.x checkpoint"
        )));
    }
    Ok(())
}

fn unet_shape<'a>(shapes: &'a Shapes, key: &str) -> Option<&'a Vec<usize>> {
    shapes
        .get(&format!("{UNET_PREFIX}{key}"))
        .or_else(|| shapes.get(&ema_key(&format!("{UNET_PREFIX}{key}"))))
}

fn first_cross_attention_dim(shapes: &Shapes) -> Option<usize> {
    shapes
        .iter()
        .find(|(k, _)| k.starts_with(UNET_PREFIX) && k.ends_with("attn2.to_k.weight"))
        .and_then(|(_, s)| s.get(1).copied())
}

/// The EMA copy's key of a UNet key of the original layout.
pub fn ema_key(original: &str) -> String {
    let after_model = original.strip_prefix("model.").unwrap_or(original);
    format!("{EMA_PREFIX}{}", after_model.replace('.', ""))
}

/// `shape` checked to have `rank` dimensions, so a damaged file is refused by name instead of
/// an index out of bounds.
fn of_rank<'a>(shape: &'a [usize], rank: usize, path: &str, key: &str) -> Result<&'a [usize]> {
    if shape.len() != rank || shape.contains(&0) {
        return Err(TavError::InvalidInput(format!(
            "{path}: tensor `{key}` has shape {:?}; it must have {rank} non-zero dimensions",
            shape
        )));
    }
    Ok(shape)
}

fn missing(path: &str, key: &str) -> TavError {
    TavError::MissingTensor {
        path: path.to_string(),
        tensor: key.to_string(),
    }
}

/// The UNet's config from its shapes; heads, norm groups and the like are SD v1.x's.
pub fn infer_unet(shapes: &Shapes, path: &str) -> Result<UNetConfig> {
    let shape = |key: &str| -> Result<&[usize]> {
        let full = format!("{UNET_PREFIX}{key}");
        let shape = unet_shape(shapes, key).ok_or_else(|| missing(path, &full))?;
        of_rank(shape, 4, path, &full)
    };
    let has = |key: &str| unet_shape(shapes, key).is_some();
    let conv_in = shape("input_blocks.0.0.weight")?;
    let conv_out = shape("out.2.weight")?;
    let highest_input = (0..)
        .take_while(|n| {
            has(&format!("input_blocks.{n}.0.weight"))
                || has(&format!("input_blocks.{n}.0.op.weight"))
                || has(&format!("input_blocks.{n}.0.in_layers.0.weight"))
        })
        .last()
        .unwrap_or(0);
    // The first downsampler sits right after the first block's layers.
    let layers_per_block = (1..=highest_input)
        .find(|n| has(&format!("input_blocks.{n}.0.op.weight")))
        .map_or(highest_input, |n| n - 1);
    if layers_per_block == 0 {
        return Err(TavError::InvalidInput(format!(
            "{path}: cannot find the UNet's down blocks (model.diffusion_model.input_blocks.*)"
        )));
    }
    let blocks = (highest_input + 1) / (layers_per_block + 1);
    let first_layer = |i: usize| 1 + i * (layers_per_block + 1);
    let block_out_channels = (0..blocks)
        .map(|i| {
            shape(&format!(
                "input_blocks.{}.0.out_layers.3.weight",
                first_layer(i)
            ))
            .map(|s| s[0])
        })
        .collect::<Result<Vec<_>>>()?;
    let down_attention =
        |i: usize| has(&format!("input_blocks.{}.1.proj_in.weight", first_layer(i)));
    let up_attention = |i: usize| {
        has(&format!(
            "output_blocks.{}.1.proj_in.weight",
            i * (layers_per_block + 1)
        ))
    };
    if has("input_blocks.1.1.transformer_blocks.1.attn1.to_q.weight") {
        return Err(TavError::InvalidInput(format!(
            "{path}: transformers two blocks deep (SD v1.x has one per attention)"
        )));
    }
    let cross_attention_dim = first_cross_attention_dim(shapes)
        .filter(|&d| d > 0)
        .or_else(|| {
            shapes
                .iter()
                .find(|(k, _)| k.starts_with(EMA_PREFIX) && k.ends_with("attn2to_kweight"))
                .and_then(|(_, s)| s.get(1).copied())
        })
        .ok_or_else(|| {
            TavError::InvalidInput(format!(
                "{path}: the UNet has no cross-attention (attn2.to_k)"
            ))
        })?;
    let use_linear_projection = shapes
        .iter()
        .find(|(k, _)| k.starts_with(UNET_PREFIX) && k.ends_with(".proj_in.weight"))
        .is_some_and(|(_, s)| s.len() == 2);
    let sd = UNetConfig::sd_v1_5();
    Ok(UNetConfig {
        in_channels: conv_in[1],
        out_channels: conv_out[0],
        block_out_channels,
        layers_per_block,
        cross_attention_dim,
        down_block_types: (0..blocks)
            .map(|i| {
                if down_attention(i) {
                    "CrossAttnDownBlock2D"
                } else {
                    "DownBlock2D"
                }
                .to_string()
            })
            .collect(),
        up_block_types: (0..blocks)
            .map(|i| {
                if up_attention(i) {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                }
                .to_string()
            })
            .collect(),
        use_linear_projection,
        ..sd
    })
}

/// The VAE's config from its shapes; norm groups and the latent scaling are SD v1.x's.
pub fn infer_vae(shapes: &Shapes, path: &str) -> Result<VaeConfig> {
    let shape = |key: &str| -> Result<&[usize]> {
        let full = format!("{VAE_PREFIX}{key}");
        let shape = shapes.get(&full).ok_or_else(|| missing(path, &full))?;
        of_rank(shape, 4, path, &full)
    };
    let has = |key: &str| shapes.contains_key(&format!("{VAE_PREFIX}{key}"));
    let blocks = (0..)
        .take_while(|i| has(&format!("encoder.down.{i}.block.0.conv1.weight")))
        .count();
    let layers_per_block = (0..)
        .take_while(|j| has(&format!("encoder.down.0.block.{j}.conv1.weight")))
        .count();
    if blocks == 0 {
        return Err(missing(
            path,
            &format!("{VAE_PREFIX}encoder.down.0.block.0.conv1.weight"),
        ));
    }
    let block_out_channels = (0..blocks)
        .map(|i| shape(&format!("encoder.down.{i}.block.0.conv2.weight")).map(|s| s[0]))
        .collect::<Result<Vec<_>>>()?;
    Ok(VaeConfig {
        in_channels: shape("encoder.conv_in.weight")?[1],
        out_channels: shape("decoder.conv_out.weight")?[0],
        block_out_channels,
        layers_per_block,
        latent_channels: shape("post_quant_conv.weight")?[0],
        ..VaeConfig::sd_v1_5()
    })
}

/// The text encoder's config from its shapes; heads are one per 64 channels, as in every
/// OpenAI CLIP (12 in SD v1.x's ViT-L/14).
pub fn infer_clip(shapes: &Shapes, path: &str) -> Result<ClipConfig> {
    let prefix = clip_prefix(shapes);
    let shape = |key: &str| -> Result<&[usize]> {
        let full = format!("{prefix}{key}");
        let shape = shapes.get(&full).ok_or_else(|| missing(path, &full))?;
        of_rank(shape, 2, path, &full)
    };
    let tokens = shape("embeddings.token_embedding.weight")?;
    let hidden_size = tokens[1];
    if !hidden_size.is_multiple_of(64) {
        return Err(TavError::InvalidInput(format!(
            "{path}: the text encoder is {hidden_size} wide, not a multiple of 64, so its head count \
             cannot be told from shapes: pass --model-config with a diffusers folder's configs"
        )));
    }
    let layers = (0..)
        .take_while(|l| shapes.contains_key(&format!("{prefix}encoder.layers.{l}.mlp.fc1.weight")))
        .count();
    Ok(ClipConfig {
        vocab_size: tokens[0],
        hidden_size,
        intermediate_size: shape("encoder.layers.0.mlp.fc1.weight")?[0],
        num_hidden_layers: layers,
        num_attention_heads: hidden_size / 64,
        max_position_embeddings: shape("embeddings.position_embedding.weight")?[0],
        ..ClipConfig::sd_v1_5()
    })
}

/// `cond_stage_model.transformer.text_model.`, or without `text_model.` as older
/// transformers versions saved it.
fn clip_prefix(shapes: &Shapes) -> String {
    let modern = format!("{CLIP_PREFIX}text_model.");
    if shapes.keys().any(|k| k.starts_with(&modern)) {
        modern
    } else {
        CLIP_PREFIX.to_string()
    }
}

/// Every config from the file's shapes, with SD v1.x's for what shapes cannot tell.
pub fn infer_configs(shapes: &Shapes, path: &str) -> Result<Configs> {
    Ok(Configs {
        unet: infer_unet(shapes, path)?,
        vae: infer_vae(shapes, path)?,
        clip: infer_clip(shapes, path)?,
        scheduler: SchedulerConfig::sd_v1_5(),
    })
}

impl SingleFile {
    /// Checks `file` is an SD v1.x checkpoint and maps its keys for `configs`' models.
    pub fn new(file: SafetensorsFile, configs: &Configs, device: &Device) -> Result<Self> {
        let path = file.path().to_string();
        let shapes = file.shapes();
        identify(&shapes, &path)?;
        let mut notes = Vec::new();
        let use_ema = !shapes.keys().any(|k| k.starts_with(UNET_PREFIX));
        let ema_tensors = shapes
            .keys()
            .filter(|k| k.starts_with(EMA_PREFIX) && !NOT_PARAMETERS.contains(&k.as_str()))
            .count();
        if use_ema {
            notes.push(format!(
                "{path}: the UNet's EMA weights (model_ema.*) are used: the file has no others"
            ));
        } else if ema_tensors > 0 {
            notes.push(format!(
                "{path}: {ema_tensors} EMA tensors (model_ema.*) are not used: the regular UNet weights are, as diffusers and A1111 load them"
            ));
        }
        let layout = UnetLayout::of(&configs.unet);
        let blocks = configs.vae.block_out_channels.len();
        let old_clip_names = clip_prefix(&shapes) == CLIP_PREFIX;
        let map = |component: Component, key: &str| -> Option<String> {
            match component {
                Component::Unet => {
                    unet_key(key, &layout).map(|k| if use_ema { ema_key(&k) } else { k })
                }
                Component::Vae => vae_key(key, blocks),
                Component::TextEncoder if old_clip_names => key
                    .strip_prefix("text_model.")
                    .map(|k| format!("{CLIP_PREFIX}{k}")),
                Component::TextEncoder => Some(clip_key(key)),
            }
        };
        let mut tables: [BTreeMap<String, String>; 3] = Default::default();
        for (slot, component, keys) in [
            (
                0,
                Component::Unet,
                component_keys(Component::Unet, configs, device)?,
            ),
            (
                1,
                Component::Vae,
                component_keys(Component::Vae, configs, device)?,
            ),
            (
                2,
                Component::TextEncoder,
                component_keys(Component::TextEncoder, configs, device)?,
            ),
        ] {
            for key in keys {
                if let Some(original) = map(component, &key)
                    && shapes.contains_key(&original)
                {
                    tables[slot].insert(key, original);
                }
            }
        }
        let mapped: BTreeSet<&String> = tables.iter().flat_map(|t| t.values()).collect();
        let unmapped = shapes
            .keys()
            .filter(|k| !mapped.contains(k) && !is_known_extra(k))
            .cloned()
            .collect();
        Ok(Self {
            file: Arc::new(file),
            tables,
            unmapped,
            notes,
        })
    }

    pub fn path(&self) -> &str {
        self.file.path()
    }

    /// One component's tensors under diffusers' names.
    pub fn source(&self, component: Component) -> ComponentSource {
        let slot = match component {
            Component::Unet => 0,
            Component::Vae => 1,
            Component::TextEncoder => 2,
        };
        ComponentSource {
            file: self.file.clone(),
            component,
            table: self.tables[slot].clone(),
        }
    }
}

/// Non-parameters that single files carry: schedule buffers, EMA copies, CLIP's position ids.
fn is_known_extra(key: &str) -> bool {
    NOT_PARAMETERS.contains(&key)
        || key.starts_with(EMA_PREFIX)
        || key.ends_with("embeddings.position_ids")
}

/// The diffusers keys `configs`' model of `component` asks for (nothing is allocated).
fn component_keys(component: Component, configs: &Configs, device: &Device) -> Result<Vec<String>> {
    let entries = match component {
        Component::Unet => crate::params::unet_param_entries(&configs.unet, device)?,
        Component::Vae => {
            let p = ParamBuilder::shapes_only(device);
            Vae::load(&p, &configs.vae)?;
            p.entries()
        }
        Component::TextEncoder => {
            let p = ParamBuilder::shapes_only(device);
            ClipTextEncoder::load(&p, &configs.clip)?;
            p.entries()
        }
    };
    Ok(entries.into_iter().map(|e| e.key).collect())
}

/// One component of a single-file checkpoint, its tensors under diffusers' names.
pub struct ComponentSource {
    file: Arc<SafetensorsFile>,
    component: Component,
    table: BTreeMap<String, String>,
}

impl TensorSource for ComponentSource {
    fn origin(&self) -> String {
        self.file.path().to_string()
    }

    fn fetch(&self, key: &str) -> Result<Option<HostTensor>> {
        let Some(original) = self.table.get(key) else {
            return Ok(None);
        };
        let Some(mut tensor) = self.file.fetch(original)? else {
            return Ok(None);
        };
        if self.component == Component::Vae
            && is_vae_attention_projection(key)
            && tensor.shape.len() == 4
        {
            // A 1×1 convolution's `[C, C, 1, 1]` is the linear layer's `[C, C]`.
            tensor.shape.truncate(2);
        }
        Ok(Some(tensor))
    }

    fn keys(&self) -> Vec<String> {
        self.table.keys().cloned().collect()
    }

    fn contains(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn shape_of(&self, key: &str) -> Result<Option<Vec<usize>>> {
        let Some(mut shape) = self.table.get(key).and_then(|o| self.file.shape_of(o)) else {
            return Ok(None);
        };
        if self.component == Component::Vae && is_vae_attention_projection(key) && shape.len() == 4
        {
            shape.truncate(2);
        }
        Ok(Some(shape))
    }
}

/// The configs in a diffusers folder's JSON files, for a single file whose shapes cannot
/// tell everything (a test model's head counts).
pub fn configs_from_json(unet: &str, vae: &str, clip: &str, scheduler: &str) -> Result<Configs> {
    use crate::config::parse_json;
    Ok(Configs {
        unet: parse_json("unet/config.json", unet)?,
        vae: parse_json("vae/config.json", vae)?,
        clip: parse_json("text_encoder/config.json", clip)?,
        scheduler: parse_json("scheduler/scheduler_config.json", scheduler)?,
    })
}

//! Component configs, parsed from a diffusers checkpoint's JSON files, with constructors
//! for Stable Diffusion v1.5. Nothing in the models assumes a size that is not here.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TavError};

/// A value that diffusers lets be one number or one per block.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, block: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[block],
        }
    }
}

/// `unet/config.json` (UNet2DConditionModel), inflated to 3D by tav.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct UNetConfig {
    #[serde(default = "default_4")]
    pub in_channels: usize,
    #[serde(default = "default_4")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_2")]
    pub layers_per_block: usize,
    /// In diffusers 0.11 this is the number of heads, despite its name.
    #[serde(default = "default_heads")]
    pub attention_head_dim: PerBlock,
    pub cross_attention_dim: usize,
    #[serde(default = "default_32")]
    pub norm_num_groups: usize,
    #[serde(default = "default_eps5")]
    pub norm_eps: f64,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "default_1")]
    pub downsample_padding: usize,
    #[serde(default)]
    pub act_fn: Activation,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub resnet_time_scale_shift: TimeScaleShift,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_mid_scale")]
    pub mid_block_scale_factor: f64,
    /// The latent size the model was trained at (64 for SD v1.x, so 512² frames); it only
    /// sets the default size of `tav sample`.
    #[serde(default)]
    pub sample_size: Option<usize>,
}

/// `vae/config.json` (AutoencoderKL).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct VaeConfig {
    #[serde(default = "default_3")]
    pub in_channels: usize,
    #[serde(default = "default_3")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_1")]
    pub layers_per_block: usize,
    #[serde(default = "default_4")]
    pub latent_channels: usize,
    #[serde(default = "default_32")]
    pub norm_num_groups: usize,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub act_fn: Activation,
}

/// `text_encoder/config.json` (CLIPTextModel).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_77")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps5")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: TextActivation,
}

/// The UNet's and VAE's activation (`act_fn`): SD v1.x uses SiLU only, so anything else fails
/// while its config is read, with the file named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Silu,
}

/// How the UNet's ResNets take the timestep (`resnet_time_scale_shift`): added
/// (`default`), as in SD v1.x; `scale_shift` models are refused while their config is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeScaleShift {
    #[default]
    Default,
}

/// The text encoder's feed-forward activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextActivation {
    /// `x · σ(1.702 x)`, CLIP ViT-L/14's.
    #[default]
    QuickGelu,
    Gelu,
}

/// The training schedule's betas (`beta_schedule`; diffusers' default is `linear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Linear in √β, Stable Diffusion's.
    ScaledLinear,
    #[default]
    Linear,
}

/// What the UNet predicts (`prediction_type`): SD v1.x predicts the noise; v-prediction
/// models (SD 2.x-v's target; `tav pretrain --prediction-type v_prediction`) predict the velocity
/// `√ᾱ·noise − √(1−ᾱ)·x0`, which stays well-conditioned at the noisy end where a noise
/// prediction's error is magnified `√((1−ᾱ)/ᾱ)` times in the clean sample. Other targets
/// (`sample`) are refused while the config is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PredictionType {
    #[default]
    Epsilon,
    /// Named as diffusers' configs name it, on the command line too.
    #[cfg_attr(feature = "clap", value(name = "v_prediction"))]
    VPrediction,
}

/// `scheduler/scheduler_config.json`: the DDPM training schedule and DDIM's options.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SchedulerConfig {
    #[serde(default = "default_1000")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default)]
    pub beta_schedule: BetaSchedule,
    #[serde(default)]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default)]
    pub prediction_type: PredictionType,
}

fn default_1() -> usize {
    1
}
fn default_2() -> usize {
    2
}
fn default_3() -> usize {
    3
}
fn default_4() -> usize {
    4
}
fn default_32() -> usize {
    32
}
fn default_77() -> usize {
    77
}
fn default_1000() -> usize {
    1000
}
fn default_heads() -> PerBlock {
    PerBlock::One(8)
}
fn default_eps5() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_mid_scale() -> f64 {
    1.0
}
fn default_scaling() -> f64 {
    0.18215
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}

fn bad(path: &str, reason: impl Into<String>) -> TavError {
    TavError::Config {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Parses JSON text into a config, naming `path` in any error.
pub fn parse_json<T: for<'de> Deserialize<'de>>(path: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| bad(path, e.to_string()))
}

impl UNetConfig {
    /// Stable Diffusion v1.5's UNet.
    pub fn sd_v1_5() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            attention_head_dim: PerBlock::One(8),
            cross_attention_dim: 768,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0,
            down_block_types: vec![
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "DownBlock2D".into(),
            ],
            up_block_types: vec![
                "UpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
            ],
            use_linear_projection: false,
            downsample_padding: 1,
            act_fn: Activation::Silu,
            only_cross_attention: serde_json::Value::Bool(false),
            center_input_sample: false,
            class_embed_type: None,
            num_class_embeds: None,
            resnet_time_scale_shift: TimeScaleShift::Default,
            upcast_attention: false,
            mid_block_scale_factor: 1.0,
            sample_size: Some(64),
        }
    }

    /// Rejects options of the config that tav does not implement, naming them.
    pub fn validate(&self, path: &str) -> Result<()> {
        let blocks = self.block_out_channels.len();
        if blocks == 0 {
            return Err(bad(path, "block_out_channels is empty"));
        }
        if self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            return Err(bad(
                path,
                format!(
                    "{} block_out_channels but {} down and {} up block types",
                    blocks,
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            ));
        }
        if let PerBlock::Each(v) = &self.attention_head_dim
            && v.len() != blocks
        {
            return Err(bad(
                path,
                "attention_head_dim has one entry per block, but the counts differ",
            ));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c % self.norm_num_groups != 0 {
                return Err(bad(
                    path,
                    format!(
                        "block_out_channels[{i}] = {c} is not a multiple of norm_num_groups = {}",
                        self.norm_num_groups
                    ),
                ));
            }
            let heads = self.attention_head_dim.get(i);
            if heads == 0 || c % heads != 0 {
                return Err(bad(
                    path,
                    format!("block_out_channels[{i}] = {c} is not divisible into {heads} heads"),
                ));
            }
        }
        for t in self.down_block_types.iter().chain(&self.up_block_types) {
            if !matches!(
                t.as_str(),
                "CrossAttnDownBlock2D"
                    | "DownBlock2D"
                    | "CrossAttnUpBlock2D"
                    | "UpBlock2D"
                    | "CrossAttnDownBlock3D"
                    | "DownBlock3D"
                    | "CrossAttnUpBlock3D"
                    | "UpBlock3D"
            ) {
                return Err(bad(path, format!("unsupported block type {t}")));
            }
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return Err(bad(path, "class embeddings are not supported"));
        }
        if self.only_cross_attention.as_bool().unwrap_or(false)
            || self.only_cross_attention.is_array()
        {
            return Err(bad(path, "only_cross_attention is not supported"));
        }
        Ok(())
    }

    pub fn has_cross_attention(block_type: &str) -> bool {
        block_type.starts_with("CrossAttn")
    }
}

impl VaeConfig {
    /// Stable Diffusion v1.5's VAE.
    pub fn sd_v1_5() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            act_fn: Activation::Silu,
        }
    }

    pub fn validate(&self, path: &str) -> Result<()> {
        if self.block_out_channels.is_empty() {
            return Err(bad(path, "block_out_channels is empty"));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c % self.norm_num_groups != 0 {
                return Err(bad(
                    path,
                    format!(
                        "block_out_channels[{i}] = {c} is not a multiple of norm_num_groups = {}",
                        self.norm_num_groups
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Pixels per latent cell along each side.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

impl ClipConfig {
    /// CLIP ViT-L/14's text tower, as in Stable Diffusion v1.x.
    pub fn sd_v1_5() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: TextActivation::QuickGelu,
        }
    }

    pub fn validate(&self, path: &str) -> Result<()> {
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(
                path,
                "hidden_size is not divisible by num_attention_heads",
            ));
        }
        Ok(())
    }
}

impl SchedulerConfig {
    /// Stable Diffusion v1.5's schedule.
    pub fn sd_v1_5() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            set_alpha_to_one: false,
            steps_offset: 1,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
        }
    }

    pub fn validate(&self, path: &str) -> Result<()> {
        if self.num_train_timesteps < 2 {
            return Err(bad(path, "num_train_timesteps must be at least 2"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed sets of values are enums: a value tav cannot run fails while the config is
    /// read, naming the file, the field's value and what is accepted; supported values
    /// round-trip as diffusers writes them.
    #[test]
    fn unsupported_config_values_fail_while_parsing_with_the_file_named() {
        let scheduler = |extra: &str| {
            parse_json::<SchedulerConfig>(
                "scheduler/scheduler_config.json",
                &format!("{{{extra}}}"),
            )
        };
        let sd =
            scheduler(r#""beta_schedule": "scaled_linear", "prediction_type": "epsilon""#).unwrap();
        assert_eq!(sd.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(scheduler("").unwrap().beta_schedule, BetaSchedule::Linear);
        assert_eq!(
            scheduler(r#""prediction_type": "v_prediction""#)
                .unwrap()
                .prediction_type,
            PredictionType::VPrediction
        );
        for (extra, value) in [
            (r#""prediction_type": "sample""#, "sample"),
            (
                r#""beta_schedule": "squaredcos_cap_v2""#,
                "squaredcos_cap_v2",
            ),
        ] {
            let message = scheduler(extra).unwrap_err().to_string();
            assert!(
                message.contains("scheduler/scheduler_config.json") && message.contains(value),
                "{message}"
            );
        }
        let vae = serde_json::to_value(VaeConfig::sd_v1_5()).unwrap();
        assert_eq!(vae["act_fn"], "silu");
        let mut gelu = vae.clone();
        gelu["act_fn"] = "gelu".into();
        let message = parse_json::<VaeConfig>("vae/config.json", &gelu.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("vae/config.json") && message.contains("gelu"),
            "{message}"
        );
        let clip = serde_json::to_value(ClipConfig::sd_v1_5()).unwrap();
        assert_eq!(clip["hidden_act"], "quick_gelu");
        let mut unet = serde_json::to_value(UNetConfig::sd_v1_5()).unwrap();
        unet["resnet_time_scale_shift"] = "scale_shift".into();
        assert!(parse_json::<UNetConfig>("unet/config.json", &unet.to_string()).is_err());
    }
}

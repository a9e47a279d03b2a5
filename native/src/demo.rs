//! The built-in demo: a small SD-shaped model with random weights (made here, deterministically,
//! in a few MB, with the real CLIP tokenizer) and a procedural clip, so `tav run jobs/demo.toml`
//! runs the whole job on any machine with no download. Its edits are noise: real edits need
//! Stable Diffusion weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, DeviceKind};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tav_core::clip::ClipTextEncoder;
use tav_core::config::{ClipConfig, UNetConfig, VaeConfig};
use tav_core::draws::SeededRng;
use tav_core::unet::{UNet3D, is_temporal};
use tav_core::vae::Vae;
use tav_core::weights::{ParamBuilder, ParamEntry, RandomInit};
use tav_core::{Result, TavError};

use crate::job::write_atomic;
use crate::video::{Clip, Sampling};

const VERSION: &str = "demo-model-v1";
const SEED: u64 = 2023;

fn unet_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "attention_head_dim": 4,
        "block_out_channels": [32, 64, 64, 64],
        "cross_attention_dim": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
        "norm_eps": 1e-5, "flip_sin_to_cos": true, "freq_shift": 0, "sample_size": 16
    })
}

/// The demo model's UNet configuration (`tav bench --config tiny`).
pub fn tiny_unet_config() -> UNetConfig {
    parse(&unet_config())
}

/// The demo model's three configs (`tav plan --config tiny`).
pub fn tiny_configs() -> (
    UNetConfig,
    tav_core::config::VaeConfig,
    tav_core::config::ClipConfig,
) {
    (
        tiny_unet_config(),
        parse(&vae_config()),
        parse(&clip_config()),
    )
}

fn vae_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "AutoencoderKL",
        "block_out_channels": [32, 32, 64, 64],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
        "norm_num_groups": 32, "sample_size": 128, "scaling_factor": 0.18215
    })
}

fn clip_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407
    })
}

fn scheduler_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "set_alpha_to_one": false, "steps_offset": 1, "clip_sample": false
    })
}

/// The `RandomInit { seed }` values of `entries`, as a safetensors file of `dtype` (F32 or F16).
fn safetensors_bytes(entries: &[ParamEntry], seed: u64, dtype: Dtype) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .map(|e| {
            let values = RandomInit { seed }.value(&e.key, &e.shape);
            let bytes = match dtype {
                Dtype::F16 => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            (e.key.clone(), e.shape.clone(), bytes)
        })
        .collect();
    let dtype = if dtype == Dtype::F16 {
        Dtype::F16
    } else {
        Dtype::F32
    };
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(dtype, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    // transformers and diffusers read `{"format": "pt"}` from every safetensors file.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| TavError::InvalidInput(format!("random model: {e}")))
}

fn parse<T: for<'de> serde::Deserialize<'de>>(v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).expect("demo config is valid")
}

/// Where the demo model lives: `$XDG_CACHE_HOME/tav` or `~/.cache/tav`, else the temp dir.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tav").join(VERSION)
}

/// Makes the demo model folder if it does not exist yet, and returns its path.
pub fn ensure_demo_model() -> Result<PathBuf> {
    let dir = cache_dir();
    if dir.join("model_index.json").exists() {
        return Ok(dir);
    }
    let configs = RandomModelConfigs {
        unet: unet_config(),
        vae: vae_config(),
        text_encoder: clip_config(),
        scheduler: scheduler_config(),
    };
    write_random_model(&dir, &configs, SEED, Dtype::F32, VERSION)?;
    Ok(dir)
}

/// The configs (as diffusers writes them) of a model with random weights.
pub struct RandomModelConfigs {
    pub unet: serde_json::Value,
    pub vae: serde_json::Value,
    pub text_encoder: serde_json::Value,
    pub scheduler: serde_json::Value,
}

impl RandomModelConfigs {
    /// Stable Diffusion v1.5's own configs (`tav bench --config sd15 --write-model`).
    pub fn sd_v1_5() -> Self {
        let json = |v: serde_json::Result<serde_json::Value>| v.expect("configs serialise");
        Self {
            unet: json(serde_json::to_value(UNetConfig::sd_v1_5())),
            vae: json(serde_json::to_value(VaeConfig::sd_v1_5())),
            text_encoder: json(serde_json::to_value(ClipConfig::sd_v1_5())),
            scheduler: json(serde_json::to_value(
                tav_core::config::SchedulerConfig::sd_v1_5(),
            )),
        }
    }

    /// The demo model's configs (`tav bench --config tiny --write-model`).
    pub fn tiny() -> Self {
        Self {
            unet: unet_config(),
            vae: vae_config(),
            text_encoder: clip_config(),
            scheduler: scheduler_config(),
        }
    }
}

/// Writes a diffusers folder with `RandomInit { seed }` weights in `dtype` for `configs`,
/// with the bundled CLIP tokenizer; `model_index.json` last, naming `version`.
pub fn write_random_model(
    dir: &Path,
    configs: &RandomModelConfigs,
    seed: u64,
    dtype: Dtype,
    version: &str,
) -> Result<()> {
    // Shapes come from the model code itself, so the folder always matches what tav loads.
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let shapes = |build: &dyn Fn(&ParamBuilder) -> Result<()>| -> Result<Vec<ParamEntry>> {
        let p = ParamBuilder::shapes_only(&device);
        build(&p)?;
        Ok(p.entries())
    };
    let unet: Vec<ParamEntry> =
        shapes(&|p| UNet3D::load(p, &parse::<UNetConfig>(&configs.unet)).map(drop))?
            .into_iter()
            .filter(|e| !is_temporal(&e.key))
            .collect();
    let vae = shapes(&|p| Vae::load(p, &parse::<VaeConfig>(&configs.vae)).map(drop))?;
    let text = shapes(&|p| {
        ClipTextEncoder::load(p, &parse::<ClipConfig>(&configs.text_encoder)).map(drop)
    })?;
    let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json");
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("unet/config.json", json(&configs.unet)),
        (
            "unet/diffusion_pytorch_model.safetensors",
            safetensors_bytes(&unet, seed, dtype)?,
        ),
        ("vae/config.json", json(&configs.vae)),
        (
            "vae/diffusion_pytorch_model.safetensors",
            safetensors_bytes(&vae, seed, dtype)?,
        ),
        ("text_encoder/config.json", json(&configs.text_encoder)),
        (
            "text_encoder/model.safetensors",
            safetensors_bytes(&text, seed, dtype)?,
        ),
        ("scheduler/scheduler_config.json", json(&configs.scheduler)),
    ]
    .into_iter()
    .map(|(relative, bytes)| (relative.to_string(), bytes))
    .collect();
    files.extend(crate::models::bundled_tokenizer().files);
    for (relative, bytes) in files {
        write_atomic(&dir.join(relative), &bytes)?;
    }
    // Written last: its presence means the folder is complete.
    let index = serde_json::json!({"_class_name": "StableDiffusionPipeline", "_tav": version});
    write_atomic(&dir.join("model_index.json"), &json(&index))?;
    Ok(())
}

/// The demo clip: a red ball rolling along a textured road, `total` frames at 256×256, of
/// which only the sampled ones are drawn (the work is the sample's, whatever `start`).
pub fn demo_clip(total: usize, sampling: Sampling) -> Clip {
    let (w, h) = (256usize, 256usize);
    let mut rng = SeededRng::new(7);
    // Asphalt: grey noise, blurred a little along rows so it reads as texture.
    let grain: Vec<f32> = rng.normal_vec(w * h);
    let sampled = (0..sampling.count)
        .filter_map(|k| {
            k.checked_mul(sampling.stride)
                .and_then(|o| o.checked_add(sampling.start))
        })
        .filter(|&t| t < total);
    let frames = sampled
        .map(|t| {
            let progress = t as f32 / total.max(2) as f32;
            let (cx, cy) = (
                30.0 + progress * 196.0,
                150.0 - 20.0 * (progress * std::f32::consts::TAU).sin().abs(),
            );
            let mut rgb = vec![0u8; w * h * 3];
            for y in 0..h {
                for x in 0..w {
                    let i = y * w + x;
                    let g = grain[i] * 0.6 + grain[y * w + (x + 1) % w] * 0.4;
                    let mut px = if y < 90 {
                        [120.0 + y as f32 * 0.8, 170.0 + y as f32 * 0.5, 235.0]
                    } else {
                        let base = 95.0 + g * 14.0;
                        let stripe = (y as i32 - 170).abs() < 3 && ((x + t * 8) / 24) % 2 == 0;
                        if stripe {
                            [230.0, 200.0, 60.0]
                        } else {
                            [base, base, base + 4.0]
                        }
                    };
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let d = (dx * dx + dy * dy).sqrt();
                    if d < 26.0 {
                        let shade = 1.0 - 0.5 * (dx + dy + 26.0) / 52.0;
                        px = [220.0 * shade + 30.0, 30.0 * shade, 30.0 * shade];
                    }
                    for c in 0..3 {
                        rgb[i * 3 + c] = px[c].clamp(0.0, 255.0) as u8;
                    }
                }
            }
            rgb
        })
        .collect();
    Clip {
        width: w as u32,
        height: h as u32,
        fps: 8.0,
        frames,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tav bench --config sd15 --write-model` writes SD v1.5's configs as JSON; tav must read
    /// back exactly the configs it benchmarks and plans.
    #[test]
    fn sd15_configs_written_as_json_read_back_the_same() {
        let configs = RandomModelConfigs::sd_v1_5();
        assert_eq!(parse::<UNetConfig>(&configs.unet), UNetConfig::sd_v1_5());
        assert_eq!(parse::<VaeConfig>(&configs.vae), VaeConfig::sd_v1_5());
        assert_eq!(
            parse::<ClipConfig>(&configs.text_encoder),
            ClipConfig::sd_v1_5()
        );
    }

    /// The tiny random model written in f16 loads, and its weights are the f16 rounding of the
    /// f32 ones.
    #[test]
    fn a_random_model_written_in_f16_holds_the_rounded_values() {
        let dir = std::env::temp_dir().join(format!("tav-random-f16-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_random_model(&dir, &RandomModelConfigs::tiny(), 7, Dtype::F16, "test").unwrap();
        let bytes = std::fs::read(dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (key, view) = file
            .tensors()
            .into_iter()
            .find(|(_, v)| v.shape().len() == 4)
            .unwrap();
        assert_eq!(view.dtype(), Dtype::F16);
        let expected = RandomInit { seed: 7 }.value(&key, view.shape());
        let stored: Vec<f32> = view
            .data()
            .chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(stored.len(), expected.len());
        for (s, e) in stored.iter().zip(&expected) {
            assert_eq!(*s, half::f16::from_f32(*e).to_f32());
        }
        assert!(dir.join("model_index.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

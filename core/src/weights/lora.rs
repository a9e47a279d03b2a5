//! LoRA files (style and subject adapters), merged into the frozen weights at load:
//! `W + scale · (alpha / rank) · B · A`.
//!
//! Two formats are read:
//! - kohya / A1111: `lora_unet_<module>.lora_down.weight` (A), `.lora_up.weight` (B),
//!   `.alpha`, and `lora_te_<module>` for the text encoder, where `<module>` is the module
//!   path with `_` for `.`, in diffusers' names or the original (CompVis) ones;
//! - diffusers / PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight` (also
//!   `text_encoder.`, `base_model.model.`, the older `.lora.down` / `.lora.up`,
//!   `.lora_linear_layer.down` / `.up` and attention-processor `processor.to_q_lora.down`
//!   names); alpha, when absent, is the rank.
//!
//! Linear layers and 1×1 / 3×3 convolutions of the UNet and the text encoder are patched.
//! Because the patch is merged before tuning starts, tuning's trainable layers (the query
//! projections) start from the merged values and the tuned file holds the merged-then-tuned
//! values: editing with the same LoRAs reproduces the tuned model.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Result, Shape, TavError};
use crate::single_file::{UnetLayout, unet_key};
use crate::weights::{
    DeviceTensor, HostTensor, HostTensorF16, ParamEntry, SafetensorsFile, TensorSource,
};

/// A LoRA file and the scale it is applied at (`--lora FILE[:SCALE]`).
pub struct Lora {
    pub path: String,
    pub scale: f64,
    /// Fingerprint of the file (see [`crate::delta::fingerprint`]).
    pub fingerprint: String,
    modules: Vec<LoraModule>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Lora({}, scale {}, {} layers)",
            self.path,
            self.scale,
            self.modules.len()
        )
    }
}

/// Which model a LoRA module patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Unet,
    TextEncoder,
}

/// One patched layer: its name in the file, where it points, its factors.
struct LoraModule {
    /// The module's stem as the file names it (for messages).
    name: String,
    target: Target,
    /// The module path: dotted (PEFT) or flattened with `_` (kohya).
    path: String,
    flattened: bool,
    /// A: `[rank, in(, kh, kw)]`.
    down: HostTensor,
    /// B: `[out, rank(, 1, 1)]`.
    up: HostTensor,
    alpha: Option<f32>,
}

/// What the file calls A, B and alpha of a module: (stem, part).
fn split_key(key: &str) -> Option<(&str, &'static str)> {
    const PARTS: [(&str, &str); 11] = [
        (".lora_down.weight", "down"),
        (".lora_up.weight", "up"),
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora_linear_layer.down.weight", "down"),
        (".lora_linear_layer.up.weight", "up"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        ("_lora.down.weight", "down"),
        ("_lora.up.weight", "up"),
        (".alpha", "alpha"),
    ];
    PARTS
        .iter()
        .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|stem| (stem, *part)))
}

/// A module stem → (target, path, flattened).
fn locate(stem: &str, path: &str) -> Result<(Target, String, bool)> {
    if let Some(rest) = stem.strip_prefix("lora_unet_") {
        return Ok((Target::Unet, rest.to_string(), true));
    }
    if let Some(rest) = stem.strip_prefix("lora_te_") {
        return Ok((Target::TextEncoder, rest.to_string(), true));
    }
    if stem.starts_with("lora_te1_") || stem.starts_with("lora_te2_") {
        return Err(TavError::InvalidInput(format!(
            "{path} is a LoRA for Stable Diffusion XL (two text encoders, lora_te1_/lora_te2_); \
             tav runs SD v1.x"
        )));
    }
    let mut dotted = stem;
    for prefix in ["base_model.model.", "lora_unet.", "unet."] {
        dotted = dotted.strip_prefix(prefix).unwrap_or(dotted);
    }
    // The attention-processor format: `attn1.processor.to_q_lora` is `attn1.to_q`, and
    // `to_out_lora` is `to_out.0` (the `_lora` is gone with the suffix).
    let dotted = dotted.replace(".processor.", ".");
    let dotted = match dotted.strip_suffix(".to_out") {
        Some(module) => format!("{module}.to_out.0"),
        None => dotted,
    };
    if let Some(rest) = dotted.strip_prefix("text_encoder.") {
        return Ok((Target::TextEncoder, rest.to_string(), false));
    }
    if dotted.starts_with("text_model.") {
        return Ok((Target::TextEncoder, dotted, false));
    }
    Ok((Target::Unet, dotted, false))
}

impl Lora {
    /// Reads a LoRA file's modules; `scale` is the user's strength.
    pub fn read(file: &SafetensorsFile, scale: f64) -> Result<Self> {
        let path = file.path().to_string();
        let bad = |reason: String| TavError::InvalidInput(format!("LoRA {path}: {reason}"));
        let mut parts: BTreeMap<String, HashMap<&'static str, HostTensor>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for key in file.keys() {
            match split_key(&key) {
                Some((stem, part)) => {
                    let tensor = file.fetch(&key)?.expect("listed key");
                    if tensor.data.iter().any(|v| !v.is_finite()) {
                        return Err(TavError::NonFiniteWeights {
                            path: path.clone(),
                            tensor: key,
                        });
                    }
                    parts
                        .entry(stem.to_string())
                        .or_default()
                        .insert(part, tensor);
                }
                None => unknown.push(key),
            }
        }
        if parts.is_empty() {
            return Err(bad(
                "no LoRA tensors (neither kohya's lora_down/lora_up nor PEFT's lora_A/lora_B): is it a LoRA?".into(),
            ));
        }
        if !unknown.is_empty() {
            return Err(bad(format!(
                "{} tensors are not LoRA factors, e.g. `{}`",
                unknown.len(),
                unknown[0]
            )));
        }
        let mut modules = Vec::new();
        for (stem, mut factors) in parts {
            let (Some(down), Some(up)) = (factors.remove("down"), factors.remove("up")) else {
                return Err(bad(format!(
                    "module `{stem}` lacks its down (A) or up (B) factor"
                )));
            };
            let rank = down.shape[0];
            if up.shape.len() < 2 || up.shape[1] != rank || up.shape[2..].iter().any(|&d| d != 1) {
                return Err(bad(format!(
                    "module `{stem}`: up {} does not match down {} (rank {rank})",
                    Shape(up.shape.clone()),
                    Shape(down.shape.clone())
                )));
            }
            let alpha = factors
                .remove("alpha")
                .and_then(|a| a.data.first().copied());
            let (target, module_path, flattened) = locate(&stem, &path)?;
            modules.push(LoraModule {
                name: stem,
                target,
                path: module_path,
                flattened,
                down,
                up,
                alpha,
            });
        }
        Ok(Self {
            path,
            scale,
            fingerprint: crate::delta::fingerprint(file),
            modules,
        })
    }

    /// How many layers this LoRA patches.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

/// One factor pair to add to a weight: `factor · B · A`, B as `[out, rank]`, A as
/// `[rank, k]`.
#[derive(Clone)]
struct Patch {
    up: std::sync::Arc<HostTensor>,
    down: std::sync::Arc<HostTensor>,
    factor: f32,
}

/// Every weight key a set of LoRAs patches, with its patches.
#[derive(Clone, Default)]
pub struct Patches {
    by_key: BTreeMap<String, Vec<Patch>>,
}

impl Patches {
    /// Resolves `loras`' modules for `target` against the model's parameters (`entries`);
    /// for the UNet, kohya names in the original layout resolve through `layout`. Every
    /// module of that target must fit one layer, with its shape.
    pub fn resolve(
        loras: &[&Lora],
        target: Target,
        entries: &[ParamEntry],
        layout: Option<&UnetLayout>,
    ) -> Result<Self> {
        let mut dotted: HashMap<String, &ParamEntry> = HashMap::new();
        let mut flat: HashMap<String, &ParamEntry> = HashMap::new();
        for e in entries
            .iter()
            .filter(|e| e.key.ends_with(".weight") && e.shape.len() >= 2)
        {
            let module = e.key.strip_suffix(".weight").expect("ends with .weight");
            dotted.insert(module.to_string(), e);
            flat.insert(module.replace('.', "_"), e);
            if let Some(original) = layout.and_then(|l| unet_key(&e.key, l)) {
                let original = original
                    .strip_prefix(crate::single_file::UNET_PREFIX)
                    .unwrap_or(&original);
                let original = original.strip_suffix(".weight").unwrap_or(original);
                flat.insert(original.replace('.', "_"), e);
            }
        }
        let mut patches = Patches::default();
        for lora in loras {
            let mut unfit = Vec::new();
            for m in lora.modules.iter().filter(|m| m.target == target) {
                let entry = if m.flattened {
                    flat.get(&m.path)
                } else {
                    dotted.get(&m.path)
                };
                let Some(entry) = entry else {
                    unfit.push(m.name.clone());
                    continue;
                };
                patches
                    .by_key
                    .entry(entry.key.clone())
                    .or_default()
                    .push(m.patch(lora, entry)?);
            }
            if !unfit.is_empty() {
                return Err(TavError::InvalidInput(format!(
                    "LoRA {}: {} of its layers fit no layer of this model (e.g. `{}`): is it a LoRA \
                     for another base model (SD 2.x, SDXL)?",
                    lora.path,
                    unfit.len(),
                    unfit[0]
                )));
            }
        }
        Ok(patches)
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Adds the patches of `key` (if any) to `tensor`, in place.
    fn apply(&self, key: &str, tensor: &mut HostTensor) {
        for p in self.by_key.get(key).into_iter().flatten() {
            let (out, rank) = (p.up.shape[0], p.down.shape[0]);
            let k = p.down.data.len() / rank;
            for o in 0..out {
                let row = &mut tensor.data[o * k..(o + 1) * k];
                for r in 0..rank {
                    let b = p.factor * p.up.data[o * rank + r];
                    let a = &p.down.data[r * k..(r + 1) * k];
                    row.iter_mut().zip(a).for_each(|(w, &a)| *w += b * a);
                }
            }
        }
    }
}

impl LoraModule {
    fn patch(&self, lora: &Lora, entry: &ParamEntry) -> Result<Patch> {
        let rank = self.down.shape[0];
        let k: usize = self.down.shape[1..].iter().product();
        let (out, target_k) = (entry.shape[0], entry.shape[1..].iter().product::<usize>());
        if self.up.shape[0] != out || k != target_k {
            return Err(TavError::InvalidInput(format!(
                "LoRA {}: layer `{}` (B {} · A {}) does not fit `{}` of shape {}",
                lora.path,
                self.name,
                Shape(self.up.shape.clone()),
                Shape(self.down.shape.clone()),
                entry.key,
                Shape(entry.shape.clone())
            )));
        }
        let alpha = self.alpha.map_or(1.0, |a| a as f64 / rank as f64);
        Ok(Patch {
            up: std::sync::Arc::new(self.up.clone()),
            down: std::sync::Arc::new(self.down.clone()),
            factor: (lora.scale * alpha) as f32,
        })
    }
}

/// A tensor source with LoRA patches merged into its weights as they are read.
pub struct Patched<'a> {
    pub base: &'a dyn TensorSource,
    pub patches: &'a Patches,
}

impl TensorSource for Patched<'_> {
    fn origin(&self) -> String {
        self.base.origin()
    }

    fn fetch(&self, key: &str) -> Result<Option<HostTensor>> {
        let Some(mut tensor) = self.base.fetch(key)? else {
            return Ok(None);
        };
        self.patches.apply(key, &mut tensor);
        Ok(Some(tensor))
    }

    fn keys(&self) -> Vec<String> {
        self.base.keys()
    }

    fn contains(&self, key: &str) -> bool {
        self.base.contains(key)
    }

    fn fetch_on_device(&self, key: &str) -> Result<Option<DeviceTensor>> {
        if self.patches.by_key.contains_key(key) {
            return Ok(None);
        }
        self.base.fetch_on_device(key)
    }

    fn take_host_f16(&self, key: &str) -> Option<HostTensorF16> {
        if self.patches.by_key.contains_key(key) {
            return None;
        }
        self.base.take_host_f16(key)
    }
}

/// `FILE[:SCALE]` as `--lora` takes it (the scale defaults to 1; a path may hold `:`).
pub fn parse_spec(spec: &str) -> std::result::Result<(String, f64), String> {
    if let Some((path, scale)) = spec.rsplit_once(':')
        && let Ok(scale) = scale.parse::<f64>()
    {
        if !scale.is_finite() {
            return Err(format!("--lora {spec}: the scale must be a finite number"));
        }
        return Ok((path.to_string(), scale));
    }
    Ok((spec.to_string(), 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Module stems as the tools write them → where they point.
    #[test]
    fn stems_locate_their_module() {
        let cases = [
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in",
                Target::Unet,
                "down_blocks_0_attentions_0_proj_in",
                true,
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1",
                Target::TextEncoder,
                "text_model_encoder_layers_0_mlp_fc1",
                true,
            ),
            (
                "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
                Target::Unet,
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
                false,
            ),
            (
                "text_encoder.text_model.encoder.layers.3.self_attn.v_proj",
                Target::TextEncoder,
                "text_model.encoder.layers.3.self_attn.v_proj",
                false,
            ),
            (
                "base_model.model.up_blocks.1.attentions.2.proj_out",
                Target::Unet,
                "up_blocks.1.attentions.2.proj_out",
                false,
            ),
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q",
                Target::Unet,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                false,
            ),
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out",
                Target::Unet,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
                false,
            ),
        ];
        for (stem, target, path, flat) in cases {
            assert_eq!(
                locate(stem, "x").unwrap(),
                (target, path.to_string(), flat),
                "{stem}"
            );
        }
        let key =
            "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight";
        assert_eq!(
            split_key(key),
            Some((
                "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out",
                "up"
            ))
        );
        assert!(locate("lora_te2_text_model_encoder_layers_0_mlp_fc1", "x").is_err());
    }

    #[test]
    fn scale_follows_the_last_colon() {
        assert_eq!(
            parse_spec("style.safetensors:0.8").unwrap(),
            ("style.safetensors".into(), 0.8)
        );
        assert_eq!(
            parse_spec("style.safetensors").unwrap(),
            ("style.safetensors".into(), 1.0)
        );
        assert_eq!(
            parse_spec("C:/loras/a.safetensors").unwrap(),
            ("C:/loras/a.safetensors".into(), 1.0)
        );
        assert!(parse_spec("a.safetensors:inf").is_err());
    }
}

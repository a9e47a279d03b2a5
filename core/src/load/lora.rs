//! LoRA files (style and subject adapters), merged into the frozen weights at load:
//! `W + scale · (alpha / rank) · B · A`.
//!
//! The formats the tools users have write:
//! - kohya / A1111 (sd-scripts, diffusers' `convert_state_dict_to_kohya`):
//!   `lora_unet_<module>.lora_down.weight` (A), `.lora_up.weight` (B), `.alpha` (any float or
//!   integer dtype: diffusers' converter writes int64), and `lora_te_<module>` — or `lora_te1_`,
//!   as diffusers' converter names SD v1's one text encoder — for the text encoder, where
//!   `<module>` is the module path with `_` for `.`, in diffusers' names or the original
//!   (CompVis) ones;
//! - diffusers / PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight` (also
//!   `text_encoder.`, `base_model.model.`, the older `.lora.down` / `.lora.up`,
//!   `.lora_linear_layer.down` / `.up` and attention-processor `processor.to_q_lora.down`
//!   names). Alpha comes from the file's `lora_adapter_metadata` (diffusers'
//!   `save_lora_weights` stores PEFT's `lora_alpha`, `r`, `alpha_pattern`, `use_rslora` there),
//!   or an `.alpha` tensor; without either it is the rank.
//!
//! ComfyUI's saves (`diffusion_model.<original module path>`, `text_encoders.clip_l.transformer.`)
//! are read too. Text-encoder layers are named as transformers 4 (`text_model.encoder.layers.N`) or 5
//! (`encoder.layers.N`) names them. Other adapter kinds (LyCORIS LoHa, LoKr, OFT, full diffs;
//! DoRA) are refused naming the format: merging them as LoRA would be silently wrong.
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

/// The largest LoRA strength accepted (either sign). Tools offer about ±2 to ±20; beyond
/// 100 the merged weights are meaningless and soon overflow.
pub const MAX_SCALE: f64 = 100.0;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// `alpha / rank` (or PEFT's rsLoRA `alpha / √rank`).
    alpha_over_rank: f64,
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

/// Adapter kinds that are not LoRA, by the key parts that give them away.
fn other_adapter_kind(key: &str) -> Option<&'static str> {
    // Parts found anywhere in a key (they may be followed by `.weight`).
    const INSIDE: [(&str, &str); 8] = [
        (".hada_w", "LyCORIS LoHa (hada_w1_a/hada_w2_a…)"),
        (".hada_t", "LyCORIS LoHa with Tucker factors (hada_t1)"),
        (".lokr_w", "LyCORIS LoKr (lokr_w1/lokr_w2…)"),
        (".lokr_t", "LyCORIS LoKr with Tucker factors (lokr_t2)"),
        (".lora_mid.", "LyCORIS LoCon with Tucker factors (lora_mid)"),
        (".oft_blocks", "OFT (oft_blocks)"),
        (".oft_diag", "OFT (oft_diag)"),
        (
            ".lora_magnitude_vector",
            "DoRA (PEFT's lora_magnitude_vector)",
        ),
    ];
    // Parts that end a key.
    const ENDING: [(&str, &str); 6] = [
        (".diff", "a LyCORIS full-weight diff (diff)"),
        (".diff_b", "a LyCORIS full-weight diff (diff_b)"),
        (".w_norm", "a LyCORIS norm adapter (w_norm)"),
        (".b_norm", "a LyCORIS norm adapter (b_norm)"),
        (".dora_scale", "DoRA (kohya's dora_scale)"),
        (".lora_B.bias", "a LoRA with biases (PEFT's lora_bias)"),
    ];
    INSIDE
        .iter()
        .find(|(part, _)| key.contains(part))
        .or_else(|| ENDING.iter().find(|(part, _)| key.ends_with(part)))
        .map(|(_, kind)| *kind)
}

/// A module stem → (target, path, flattened). `te1_is_sd1`: the file has `lora_te1_` keys
/// and no `lora_te2_`, so `lora_te1_` is SD v1's one text encoder.
fn locate(stem: &str, path: &str, te1_is_sd1: bool) -> Result<(Target, String, bool)> {
    if let Some(rest) = stem.strip_prefix("lora_unet_") {
        return Ok((Target::Unet, rest.to_string(), true));
    }
    let kohya_text = stem
        .strip_prefix("lora_te_")
        .or_else(|| stem.strip_prefix("lora_te1_").filter(|_| te1_is_sd1));
    if let Some(rest) = kohya_text {
        // transformers 5 names CLIP's layers without `text_model.`.
        let rest = if rest.starts_with("text_model_") {
            rest.to_string()
        } else {
            format!("text_model_{rest}")
        };
        return Ok((Target::TextEncoder, rest, true));
    }
    if stem.starts_with("lora_te1_") || stem.starts_with("lora_te2_") {
        return Err(TavError::InvalidInput(format!(
            "LoRA {path} is for Stable Diffusion XL (two text encoders, lora_te1_ and \
             lora_te2_); tav runs SD v1.x"
        )));
    }
    // ComfyUI's LoRA saves name modules in the original layout, dotted:
    // `diffusion_model.input_blocks.1.1.proj_in`, `text_encoders.clip_l.transformer.…`.
    if let Some(rest) = stem
        .strip_prefix("model.diffusion_model.")
        .or_else(|| stem.strip_prefix("diffusion_model."))
    {
        return Ok((Target::Unet, rest.replace('.', "_"), true));
    }
    if let Some(rest) = stem
        .strip_prefix("text_encoders.clip_l.transformer.")
        .or_else(|| stem.strip_prefix("cond_stage_model.transformer."))
    {
        let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
        return Ok((Target::TextEncoder, format!("text_model.{rest}"), false));
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
    let text = dotted
        .strip_prefix("text_encoder.")
        .or_else(|| dotted.strip_prefix("lora_te."));
    if let Some(rest) = text {
        let rest = if rest.starts_with("text_model.") {
            rest.to_string()
        } else {
            format!("text_model.{rest}")
        };
        return Ok((Target::TextEncoder, rest, false));
    }
    if dotted.starts_with("text_model.") {
        return Ok((Target::TextEncoder, dotted, false));
    }
    Ok((Target::Unet, dotted, false))
}

/// PEFT's settings of one model's adapter, from diffusers' `lora_adapter_metadata`.
#[derive(Debug, Default, Clone, PartialEq)]
struct AdapterSettings {
    rank: Option<f64>,
    alpha: Option<f64>,
    /// Module-name patterns → their own rank or alpha (PEFT's `rank_pattern`/`alpha_pattern`).
    rank_pattern: Vec<(String, f64)>,
    alpha_pattern: Vec<(String, f64)>,
    rslora: bool,
}

/// The metadata's settings per target (`unet.lora_alpha`, `text_encoder.r`, …).
fn adapter_settings(
    metadata: &BTreeMap<String, String>,
    path: &str,
) -> Result<HashMap<Target, AdapterSettings>> {
    let bad = |reason: String| {
        TavError::InvalidInput(format!(
            "LoRA {path}: metadata `lora_adapter_metadata`: {reason}"
        ))
    };
    let mut out = HashMap::new();
    let Some(text) = metadata.get("lora_adapter_metadata") else {
        return Ok(out);
    };
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let serde_json::Value::Object(fields) = json else {
        return Err(bad("not a JSON object".into()));
    };
    let number = |field: &str, v: &serde_json::Value| -> Result<f64> {
        v.as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| bad(format!("`{field}` is {v}, not a finite number")))
    };
    for (field, value) in &fields {
        let (target, name) = if let Some(name) = field.strip_prefix("unet.") {
            (Target::Unet, name)
        } else if let Some(name) = field.strip_prefix("text_encoder.") {
            (Target::TextEncoder, name)
        } else if field.starts_with("text_encoder_2.") {
            return Err(TavError::InvalidInput(format!(
                "LoRA {path} is for Stable Diffusion XL (its metadata has a second text \
                 encoder, text_encoder_2); tav runs SD v1.x"
            )));
        } else {
            continue;
        };
        let settings: &mut AdapterSettings = out.entry(target).or_default();
        let pattern = |v: &serde_json::Value| -> Result<Vec<(String, f64)>> {
            match v {
                serde_json::Value::Null => Ok(Vec::new()),
                serde_json::Value::Object(m) => m
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), number(&format!("{field}.{k}"), v)?)))
                    .collect(),
                other => Err(bad(format!("`{field}` is {other}, not an object"))),
            }
        };
        match name {
            "r" => settings.rank = Some(number(field, value)?),
            "lora_alpha" => settings.alpha = Some(number(field, value)?),
            "rank_pattern" => settings.rank_pattern = pattern(value)?,
            "alpha_pattern" => settings.alpha_pattern = pattern(value)?,
            "use_rslora" => settings.rslora = value.as_bool().unwrap_or(false),
            "use_dora" if value.as_bool() == Some(true) => {
                return Err(TavError::InvalidInput(format!(
                    "LoRA {path} is DoRA (its metadata says use_dora): tav merges plain LoRA \
                     only, and merging DoRA as LoRA would be wrong"
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// PEFT's pattern match: the pattern names the module or a dotted suffix of its path.
fn pattern_value(patterns: &[(String, f64)], module: &str) -> Option<f64> {
    patterns
        .iter()
        .filter(|(p, _)| module == p || module.ends_with(&format!(".{p}")))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, v)| *v)
}

impl Lora {
    /// Reads a LoRA file's modules; `scale` is the user's strength. Everything a merge needs
    /// is checked here, before any model is loaded.
    pub fn read(file: &SafetensorsFile, scale: f64) -> Result<Self> {
        let path = file.path().to_string();
        let bad = |reason: String| TavError::InvalidInput(format!("LoRA {path}: {reason}"));
        check_scale(scale).map_err(&bad)?;
        let keys = file.keys();
        if let Some((key, kind)) = keys
            .iter()
            .find_map(|k| other_adapter_kind(k).map(|kind| (k, kind)))
        {
            return Err(bad(format!(
                "it is {kind} (e.g. `{key}`), not a LoRA: tav merges LoRA (lora_down/lora_up \
                 or lora_A/lora_B) only; merge it into the model with its own tool first"
            )));
        }
        let has = |prefix: &str| keys.iter().any(|k| k.starts_with(prefix));
        let te1_is_sd1 = has("lora_te1_") && !has("lora_te2_");
        let settings = adapter_settings(&file.metadata(), &path)?;
        let mut parts: BTreeMap<String, HashMap<&'static str, String>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for key in keys {
            match split_key(&key) {
                Some((stem, part)) => {
                    parts
                        .entry(stem.to_string())
                        .or_default()
                        .insert(part, key.clone());
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
        let factor = |key: &str| -> Result<HostTensor> {
            let tensor = file.fetch(key)?.expect("listed key");
            if tensor.data.iter().any(|v| !v.is_finite()) {
                return Err(TavError::NonFiniteWeights {
                    path: path.clone(),
                    tensor: key.to_string(),
                });
            }
            Ok(tensor)
        };
        let mut modules = Vec::new();
        for (stem, keys) in parts {
            let (Some(down_key), Some(up_key)) = (keys.get("down"), keys.get("up")) else {
                return Err(bad(format!(
                    "module `{stem}` lacks its down (A) or up (B) factor"
                )));
            };
            let (down, up) = (factor(down_key)?, factor(up_key)?);
            if down.shape.len() < 2 || up.shape.len() < 2 {
                return Err(bad(format!(
                    "module `{stem}`: factors of {} dimensions (down {}, up {}); LoRA factors \
                     are matrices or convolution kernels",
                    down.shape.len().min(up.shape.len()),
                    Shape(down.shape.clone()),
                    Shape(up.shape.clone())
                )));
            }
            let rank = down.shape[0];
            if rank == 0 {
                return Err(bad(format!(
                    "module `{stem}` has rank 0 (down {}): an empty LoRA layer; the file is \
                     damaged or was saved from an untrained network",
                    Shape(down.shape.clone())
                )));
            }
            if up.shape[1] != rank || up.shape[2..].iter().any(|&d| d != 1) {
                return Err(bad(format!(
                    "module `{stem}`: up {} does not match down {} (rank {rank})",
                    Shape(up.shape.clone()),
                    Shape(down.shape.clone())
                )));
            }
            let (target, module_path, flattened) = locate(&stem, &path, te1_is_sd1)?;
            if let Some(kind) = other_base_model(&module_path, &down) {
                return Err(bad(format!(
                    "it is for {kind} (layer `{stem}` takes {} inputs); tav runs SD v1.x",
                    down.shape[1]
                )));
            }
            let alpha_tensor = match keys.get("alpha") {
                Some(key) => Some(alpha_of(file, key, &path)?),
                None => None,
            };
            let peft = settings.get(&target);
            let alpha = match (alpha_tensor, peft) {
                (Some(alpha), _) => alpha,
                (None, Some(s)) => pattern_value(&s.alpha_pattern, &module_path)
                    .or(s.alpha)
                    .unwrap_or(rank as f64),
                (None, None) => rank as f64,
            };
            if let Some(expected) =
                peft.and_then(|s| pattern_value(&s.rank_pattern, &module_path).or(s.rank))
                && expected != rank as f64
            {
                return Err(bad(format!(
                    "module `{stem}` has rank {rank} but the file's lora_adapter_metadata says \
                     {expected}: the file is inconsistent"
                )));
            }
            if alpha == 0.0 {
                return Err(bad(format!(
                    "module `{stem}` has alpha 0, so it would change nothing (a LoRA's layers \
                     are scaled by alpha / rank); the file is damaged or was saved wrongly"
                )));
            }
            let rslora = peft.is_some_and(|s| s.rslora);
            let alpha_over_rank = if rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            };
            modules.push(LoraModule {
                name: stem,
                target,
                path: module_path,
                flattened,
                down,
                up,
                alpha_over_rank,
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

/// Why a LoRA strength is refused, if it is.
pub fn check_scale(scale: f64) -> std::result::Result<(), String> {
    if !scale.is_finite() {
        return Err(format!("the scale is {scale}, not a finite number"));
    }
    if scale.abs() > MAX_SCALE {
        return Err(format!(
            "the scale {scale} is out of range (-{MAX_SCALE} to {MAX_SCALE}; 1 is the LoRA as \
             trained)"
        ));
    }
    Ok(())
}

/// A module's alpha: one finite number of any numeric dtype.
fn alpha_of(file: &SafetensorsFile, key: &str, path: &str) -> Result<f64> {
    let (shape, values) = file.fetch_numbers(key)?.expect("listed key");
    match values.as_slice() {
        [alpha] if alpha.is_finite() => Ok(*alpha),
        [alpha] => Err(TavError::InvalidInput(format!(
            "LoRA {path}: `{key}` is {alpha}, not a finite number"
        ))),
        _ => Err(TavError::InvalidInput(format!(
            "LoRA {path}: `{key}` has shape {} ({} values); an alpha is one number",
            Shape(shape),
            values.len()
        ))),
    }
}

/// The base model a layer's input width gives away, when it is not SD v1.x: the
/// cross-attention keys take the text encoder's width (768 in SD v1.x, 1024 in SD 2.x,
/// 2048 in SDXL).
fn other_base_model(module_path: &str, down: &HostTensor) -> Option<&'static str> {
    let cross_key = ["attn2.to_k", "attn2.to_v", "attn2_to_k", "attn2_to_v"]
        .iter()
        .any(|m| module_path.ends_with(m));
    match (cross_key, down.shape[1]) {
        (true, 2048) => Some("Stable Diffusion XL"),
        (true, 1024) => Some("Stable Diffusion 2.x"),
        _ => None,
    }
}

/// One factor pair to add to a weight: `factor · B · A`, B as `[out, rank]`, A as
/// `[rank, k]`.
#[derive(Clone)]
struct Patch {
    up: std::sync::Arc<HostTensor>,
    down: std::sync::Arc<HostTensor>,
    factor: f32,
    /// The LoRA file and its scale (for messages).
    lora: String,
    scale: f64,
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

    /// The weights patched.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.by_key.keys()
    }

    /// Adds the patches of `key` (if any) to `tensor`, in place; refuses a merge that leaves
    /// non-finite values, naming the LoRA (not the base model, which was finite).
    fn apply(&self, key: &str, tensor: &mut HostTensor) -> Result<()> {
        let patches = self.by_key.get(key).map_or(&[][..], |v| v.as_slice());
        for p in patches {
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
        if !patches.is_empty() && tensor.data.iter().any(|v| !v.is_finite()) {
            let named: Vec<String> = patches
                .iter()
                .map(|p| format!("{} at scale {}", p.lora, p.scale))
                .collect();
            return Err(TavError::InvalidInput(format!(
                "merging LoRA {} into `{key}` gives values beyond f32's range: lower the scale",
                named.join(" and ")
            )));
        }
        Ok(())
    }
}

impl LoraModule {
    fn patch(&self, lora: &Lora, entry: &ParamEntry) -> Result<Patch> {
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
        Ok(Patch {
            up: std::sync::Arc::new(self.up.clone()),
            down: std::sync::Arc::new(self.down.clone()),
            factor: (lora.scale * self.alpha_over_rank) as f32,
            lora: lora.path.clone(),
            scale: lora.scale,
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
        self.patches.apply(key, &mut tensor)?;
        Ok(Some(tensor))
    }

    fn keys(&self) -> Vec<String> {
        self.base.keys()
    }

    fn contains(&self, key: &str) -> bool {
        self.base.contains(key)
    }

    fn shape_of(&self, key: &str) -> Result<Option<Vec<usize>>> {
        self.base.shape_of(key)
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
        check_scale(scale).map_err(|reason| format!("--lora {spec}: {reason}"))?;
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
                locate(stem, "x", false).unwrap(),
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
        assert!(locate("lora_te2_text_model_encoder_layers_0_mlp_fc1", "x", false).is_err());
        // ComfyUI's saves: the original layout, dotted, matched as kohya's flattened names.
        assert_eq!(
            locate("diffusion_model.input_blocks.1.1.proj_in", "x", false).unwrap(),
            (Target::Unet, "input_blocks_1_1_proj_in".to_string(), true)
        );
        assert!(locate("lora_te1_text_model_encoder_layers_0_mlp_fc1", "x", false).is_err());
        // SD v1's one text encoder as diffusers' kohya converter names it, and transformers
        // 5's names without `text_model.`.
        for (stem, path, flat) in [
            (
                "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                "text_model_encoder_layers_0_mlp_fc1",
                true,
            ),
            (
                "lora_te1_encoder_layers_1_self_attn_q_proj",
                "text_model_encoder_layers_1_self_attn_q_proj",
                true,
            ),
            (
                "lora_te_encoder_layers_1_self_attn_q_proj",
                "text_model_encoder_layers_1_self_attn_q_proj",
                true,
            ),
            (
                "text_encoder.encoder.layers.1.self_attn.q_proj",
                "text_model.encoder.layers.1.self_attn.q_proj",
                false,
            ),
            (
                "text_encoders.clip_l.transformer.text_model.encoder.layers.1.mlp.fc2",
                "text_model.encoder.layers.1.mlp.fc2",
                false,
            ),
        ] {
            assert_eq!(
                locate(stem, "x", true).unwrap(),
                (Target::TextEncoder, path.to_string(), flat),
                "{stem}"
            );
        }
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
        assert!(parse_spec("a.safetensors:1e39").is_err());
        assert!(parse_spec("a.safetensors:-1e30").is_err());
        assert!(parse_spec("a.safetensors:-1.5").is_ok());
    }
}

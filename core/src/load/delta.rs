//! Tuned-weight files: only the trainable tensors (keys are the reference's module paths,
//! PyTorch layout, f32), with metadata that ties them to their base model. Training
//! checkpoints are the same file plus the optimiser's state, so a run resumes exactly.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::Tensor;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::error::{Result, Shape, TavError};
use crate::unet::UNet3D;
use crate::weights::{HostTensor, SafetensorsFile, TensorSource};

/// Format tag written into every file, checked on read.
pub const FORMAT: &str = "tav-tuned-1";
const MOMENT_M: &str = "adamw.m.";
const MOMENT_V: &str = "adamw.v.";

/// Facts about a tuning run, stored as the file's metadata.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TuneMeta {
    /// Fingerprint of the base UNet weights ([`fingerprint`]).
    pub base_fingerprint: String,
    pub prompt: String,
    pub video: String,
    pub start: usize,
    pub stride: usize,
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    /// Steps asked for, and steps done (they differ in a checkpoint).
    pub steps: usize,
    pub steps_done: usize,
    pub seed: u64,
    pub learning_rate: f64,
    /// Loss of every step so far.
    #[serde(default)]
    pub losses: Vec<f32>,
    /// LoRAs merged into the base model before tuning, in order.
    #[serde(default)]
    pub loras: Vec<LoraUse>,
}

/// A LoRA a model was tuned with: its file, fingerprint and scale.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraUse {
    pub file: String,
    pub fingerprint: String,
    pub scale: f64,
}

/// Tuned tensors plus, in a checkpoint, AdamW moments (flat, as the optimiser keeps them).
#[derive(Debug, Clone, Default)]
pub struct TunedWeights {
    pub meta: TuneMeta,
    pub tensors: BTreeMap<String, HostTensor>,
    pub moments: BTreeMap<String, (HostTensor, HostTensor)>,
}

/// A cheap, stable fingerprint of a model's weights: every tensor's name (the reference's
/// module path), shape and first values. Two different checkpoints differ in it; a
/// single-file checkpoint and the diffusers folder converted from it (same tensors, same
/// dtype) agree in it. Reading it costs no full pass over the weights.
pub fn fingerprint(source: &dyn TensorSource) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut keys = source.keys();
    keys.sort();
    for key in keys {
        eat(key.as_bytes());
        if let Ok(Some(t)) = source.fetch(&key) {
            for d in &t.shape {
                eat(&(*d as u64).to_le_bytes());
            }
            for v in t.data.iter().take(16) {
                eat(&v.to_le_bytes());
            }
        }
    }
    format!("{h:016x}")
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl TunedWeights {
    /// Serialises to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (key, t) in &self.tensors {
            owned.push((key.clone(), t.shape.clone(), f32_bytes(&t.data)));
        }
        for (key, (m, v)) in &self.moments {
            owned.push((
                format!("{MOMENT_M}{key}"),
                m.shape.clone(),
                f32_bytes(&m.data),
            ));
            owned.push((
                format!("{MOMENT_V}{key}"),
                v.shape.clone(),
                f32_bytes(&v.data),
            ));
        }
        let views = owned
            .iter()
            .map(|(k, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| TavError::InvalidInput(format!("tensor {k}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = serde_json::to_string(&self.meta).expect("metadata serialises");
        let metadata: HashMap<String, String> = [
            ("format".to_string(), FORMAT.to_string()),
            ("tav".to_string(), meta),
        ]
        .into_iter()
        .collect();
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| TavError::InvalidInput(format!("cannot serialise tuned weights: {e}")))
    }

    /// Reads a tuned-weights file or checkpoint.
    pub fn from_file(file: &SafetensorsFile) -> Result<Self> {
        let path = file.path().to_string();
        let metadata = file.metadata();
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(TavError::TunedWeights {
                path,
                reason: format!("not a tav tuned-weights file (no `format: {FORMAT}` metadata)"),
            });
        }
        let meta: TuneMeta = serde_json::from_str(metadata.get("tav").map_or("", String::as_str))
            .map_err(|e| TavError::TunedWeights {
            path: path.clone(),
            reason: format!("bad tuning metadata: {e}"),
        })?;
        let mut out = TunedWeights {
            meta,
            ..Default::default()
        };
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for key in file.keys() {
            let t = file.fetch(&key)?.expect("listed key");
            if t.data.iter().any(|v| !v.is_finite()) {
                return Err(TavError::TunedWeights {
                    path: path.clone(),
                    reason: format!(
                        "tensor `{key}` holds NaN or infinity: the tuning that wrote it diverged; \
                         tune again with a lower learning rate"
                    ),
                });
            }
            if let Some(k) = key.strip_prefix(MOMENT_M) {
                m.insert(k.to_string(), t);
            } else if let Some(k) = key.strip_prefix(MOMENT_V) {
                v.insert(k.to_string(), t);
            } else {
                out.tensors.insert(key, t);
            }
        }
        for (k, mt) in m {
            let vt = v.remove(&k).ok_or_else(|| TavError::MissingTensor {
                path: path.clone(),
                tensor: format!("{MOMENT_V}{k}"),
            })?;
            out.moments.insert(k, (mt, vt));
        }
        Ok(out)
    }

    /// Checks the file was tuned on the base model with `base_fingerprint`.
    pub fn check_base(&self, base_fingerprint: &str, path: &str) -> Result<()> {
        if self.meta.base_fingerprint != base_fingerprint {
            return Err(TavError::TunedWeights {
                path: path.to_string(),
                reason: format!(
                    "these weights were tuned on another base model (fingerprint {}, this model is {}); use the model they were tuned on",
                    self.meta.base_fingerprint, base_fingerprint
                ),
            });
        }
        Ok(())
    }
}

/// Loads tuned tensors into `unet`, checking every key and shape; a tensor the UNet does
/// not have, or one of another shape, is an error naming it.
pub fn apply_tuned(unet: UNet3D, tuned: &TunedWeights, path: &str) -> Result<UNet3D> {
    let by_key: HashMap<&str, (ParamId, &Vec<usize>)> = unet
        .params
        .iter()
        .map(|e| (e.key.as_str(), (e.id, &e.shape)))
        .collect();
    let mut values: HashMap<ParamId, HostTensor> = HashMap::new();
    for (key, t) in &tuned.tensors {
        let (id, shape) = by_key
            .get(key.as_str())
            .ok_or_else(|| TavError::TunedWeights {
                path: path.to_string(),
                reason: format!("tensor `{key}` is not a parameter of this UNet"),
            })?;
        if &t.shape != *shape {
            return Err(TavError::ShapeMismatch {
                path: path.to_string(),
                tensor: key.clone(),
                expected: Shape((*shape).clone()),
                found: Shape(t.shape.clone()),
            });
        }
        let stored = if t.shape.len() == 2 {
            t.transposed_2d()
        } else {
            t.clone()
        };
        values.insert(*id, stored);
    }
    if let Some(missing) = unet
        .params
        .iter()
        .find(|e| crate::unet::is_trainable(&e.key) && !tuned.tensors.contains_key(&e.key))
    {
        return Err(TavError::TunedWeights {
            path: path.to_string(),
            reason: format!(
                "tensor `{}` is missing: tuned weights hold every tuned layer ({} tensors here); \
                 the file is incomplete or from another tool",
                missing.key,
                tuned.tensors.len()
            ),
        });
    }
    Ok(unet.map(&mut Replace { values }))
}

struct Replace {
    values: HashMap<ParamId, HostTensor>,
}

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.values.remove(&param.id) {
            Some(host) => {
                let device = param.val().device();
                Param::initialized(param.id, host.to_device::<D>(&device))
            }
            None => param,
        }
    }
}

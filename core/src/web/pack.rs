//! Packing a checkpoint for the web (`tav pack-web`): the weights converted to f16 and cut
//! into shards (each under WebGPU's binding limits), the configs and a SHA-256 per file in
//! `manifest.json`, the tokenizer files beside it. Files go out through a callback, so this
//! does no I/O itself.

use std::collections::BTreeMap;

use half::f16;

use crate::checkpoint::{CheckpointFiles, weights_file};
use crate::delta::fingerprint;
use crate::error::{Result, TavError};
use crate::stream::{FORMAT, Manifest, ModelKind, PackedFile, PackedTensor, Shard, sha256_hex};
use crate::weights::{SafetensorsFile, TensorSource};

/// Where packed files go: relative path and bytes.
pub type WriteFile<'a> = &'a mut dyn FnMut(&str, &[u8]) -> Result<()>;

/// Tensors that are buffers, not parameters (not packed).
const SKIPPED: [&str; 1] = ["text_model.embeddings.position_ids"];

/// Options of `tav pack-web`.
pub struct PackOptions<'a> {
    /// The model's display name.
    pub name: String,
    pub variant: Option<&'a str>,
    /// Largest shard, in bytes (a larger single tensor gets a shard of its own).
    pub shard_bytes: u64,
    /// Temporal layer weights to ship with the UNet (e.g. the reference's initial values).
    pub temporal: Option<&'a SafetensorsFile>,
}

/// Shards being filled for one component.
struct ShardWriter<'a, 'w> {
    write: &'a mut WriteFile<'w>,
    component: &'a str,
    limit: u64,
    current: Vec<u8>,
    tensors: Vec<PackedTensor>,
    done: Vec<Shard>,
}

impl ShardWriter<'_, '_> {
    fn push(&mut self, key: &str, shape: Vec<usize>, data: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = data
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        if !self.current.is_empty() && (self.current.len() + bytes.len()) as u64 > self.limit {
            self.flush()?;
        }
        self.tensors.push(PackedTensor {
            key: key.to_string(),
            shape,
            offset: self.current.len() as u64,
            bytes: bytes.len() as u64,
        });
        self.current.extend_from_slice(&bytes);
        // Keep every tensor 4-byte aligned in the shard.
        while !self.current.len().is_multiple_of(4) {
            self.current.push(0);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let file = format!("{}-{:03}.bin", self.component, self.done.len());
        (self.write)(&file, &self.current)?;
        self.done.push(Shard {
            file,
            component: self.component.to_string(),
            bytes: self.current.len() as u64,
            sha256: sha256_hex(&self.current),
            tensors: std::mem::take(&mut self.tensors),
        });
        self.current.clear();
        Ok(())
    }
}

fn pack_component(
    write: &mut WriteFile,
    component: &str,
    sources: &[&dyn TensorSource],
    limit: u64,
) -> Result<Vec<Shard>> {
    let mut writer = ShardWriter {
        write,
        component,
        limit,
        current: Vec::new(),
        tensors: Vec::new(),
        done: Vec::new(),
    };
    let mut seen = std::collections::BTreeSet::new();
    for source in sources {
        let mut keys = source.keys();
        keys.sort();
        for key in keys {
            if SKIPPED.contains(&key.as_str()) || !seen.insert(key.clone()) {
                continue;
            }
            let tensor = source.fetch(&key)?.ok_or_else(|| TavError::MissingTensor {
                path: source.origin(),
                tensor: key.clone(),
            })?;
            if tensor.data.iter().any(|v| !v.is_finite()) {
                return Err(TavError::NonFiniteWeights {
                    path: source.origin(),
                    tensor: key,
                });
            }
            writer.push(&key, tensor.shape, &tensor.data)?;
        }
    }
    writer.flush()?;
    Ok(writer.done)
}

fn json_config(files: &dyn CheckpointFiles, relative: &str) -> Result<serde_json::Value> {
    let bytes = files.read(relative)?.ok_or_else(|| TavError::MissingFile {
        path: files.show(relative),
        what: "component config".into(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| TavError::Config {
        path: files.show(relative),
        reason: e.to_string(),
    })
}

/// A model's parts as the packer takes them, however they were stored.
pub struct PackParts<'a> {
    /// Component configs as the manifest carries them: `unet`, `vae`, `text_encoder`,
    /// `scheduler`.
    pub configs: BTreeMap<String, serde_json::Value>,
    pub text_encoder: &'a dyn TensorSource,
    pub vae: &'a dyn TensorSource,
    pub unet: &'a dyn TensorSource,
    /// The UNet's 2D weights before any LoRA (what tuned weights are tied to).
    pub unet_base: &'a dyn TensorSource,
    /// Where `tokenizer/` files come from.
    pub tokenizer: &'a dyn CheckpointFiles,
}

/// Packs the checkpoint `files`; returns the manifest, written last (its presence means the
/// pack is complete).
pub fn pack(
    files: &dyn CheckpointFiles,
    options: &PackOptions,
    write: WriteFile,
) -> Result<Manifest> {
    let mut configs = BTreeMap::new();
    for (name, relative) in [
        ("text_encoder", "text_encoder/config.json"),
        ("vae", "vae/config.json"),
        ("unet", "unet/config.json"),
        ("scheduler", "scheduler/scheduler_config.json"),
    ] {
        configs.insert(name.to_string(), json_config(files, relative)?);
    }
    let text = weights_file(files, "text_encoder", "model", options.variant)?;
    let vae = weights_file(files, "vae", "diffusion_pytorch_model", options.variant)?;
    let unet = weights_file(files, "unet", "diffusion_pytorch_model", options.variant)?;
    let parts = PackParts {
        configs,
        text_encoder: &text,
        vae: &vae,
        unet: &unet,
        unet_base: &unet,
        tokenizer: files,
    };
    pack_parts(&parts, options, write)
}

/// Packs a model's parts (a folder's, or a single file's with LoRAs merged).
pub fn pack_parts(
    parts: &PackParts,
    options: &PackOptions,
    mut write: WriteFile,
) -> Result<Manifest> {
    let limit = options.shard_bytes;
    let mut shards = Vec::new();
    shards.extend(pack_component(
        &mut write,
        "text_encoder",
        &[parts.text_encoder],
        limit,
    )?);
    shards.extend(pack_component(&mut write, "vae", &[parts.vae], limit)?);
    let mut unet_sources = vec![parts.unet];
    if let Some(t) = options.temporal {
        unet_sources.insert(0, t);
    }
    shards.extend(pack_component(&mut write, "unet", &unet_sources, limit)?);

    // The tokenizer: vocab + merges where the folder has them (smaller), else tokenizer.json.
    let files = parts.tokenizer;
    let wanted: &[&str] = if files.read("tokenizer/vocab.json")?.is_some() {
        &["tokenizer/vocab.json", "tokenizer/merges.txt"]
    } else {
        &["tokenizer/tokenizer.json"]
    };
    let mut packed_files = Vec::new();
    for relative in wanted {
        let bytes = files.read(relative)?.ok_or_else(|| TavError::MissingFile {
            path: files.show(relative),
            what: "tokenizer file".into(),
        })?;
        write(relative, &bytes)?;
        packed_files.push(PackedFile {
            path: relative.to_string(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
    }
    // `tav pretrain` leaves its report beside the components: that folder is a toy model.
    let kind = if files.read("tav_pretrain.json")?.is_some() {
        ModelKind::Toy
    } else {
        ModelKind::SdV1
    };
    let manifest = Manifest {
        format: FORMAT.to_string(),
        name: options.name.clone(),
        kind,
        configs: parts.configs.clone(),
        unet_fingerprint: fingerprint(parts.unet_base),
        files: packed_files,
        shards,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write("manifest.json", &json)?;
    Ok(manifest)
}

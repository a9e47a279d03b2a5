//! Streamed weights: a model packed for the web (`tav pack-web`) is a manifest and shards of
//! raw f16 tensors. Bytes are fed as they arrive; each tensor goes to GPU memory as soon as
//! its last byte is in, so the host never holds more than one tensor and one chunk.
//!
//! A shard's SHA-256 is checked when it ends: a partial or corrupt download is an error that
//! names the shard, and feeding the shard again replaces what it wrote.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{MemoryFiles, Models, load_tokenizer, report as component_report};
use crate::clip::ClipTextEncoder;
use crate::config::{ClipConfig, SchedulerConfig, UNetConfig, VaeConfig};
use crate::error::{Result, TavError};
use crate::precision::params_to_f32;
use crate::schedule::Schedule;
use crate::unet::{UNet3D, temporal_init};
use crate::vae::Vae;
use crate::weights::{DeviceTensor, HostTensor, HostTensorF16, ParamBuilder, TensorSource};

/// The manifest's format name; bumped when the layout changes.
pub const FORMAT: &str = "tav-web-1";

/// `manifest.json` of a packed model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    /// Where the model came from (the folder's name), for display.
    pub name: String,
    /// What the model is, so that a page can offer settings that suit it (older manifests,
    /// without the field, were all Stable Diffusion).
    #[serde(default)]
    pub kind: ModelKind,
    /// Component configs, as in the diffusers folder: `unet`, `vae`, `text_encoder`,
    /// `scheduler`.
    pub configs: BTreeMap<String, serde_json::Value>,
    /// Fingerprint of the original UNet weights file: tuned weights exported in the browser
    /// load in `tav edit` on the original folder, and the other way round.
    pub unet_fingerprint: String,
    /// Small files fetched whole (the tokenizer), by path relative to the manifest.
    pub files: Vec<PackedFile>,
    pub shards: Vec<Shard>,
}

/// What a packed model is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum ModelKind {
    /// tav's toy world (`tav pretrain`): 64×64 frames of coloured shapes, its own captions.
    #[serde(rename = "toy")]
    Toy,
    /// Stable Diffusion v1.x (or a model of its shape).
    #[default]
    #[serde(rename = "sd-v1")]
    SdV1,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackedFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One shard: tensors of one component, back to back, little-endian f16.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Shard {
    pub file: String,
    /// `text_encoder`, `vae` or `unet`.
    pub component: String,
    pub bytes: u64,
    pub sha256: String,
    pub tensors: Vec<PackedTensor>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackedTensor {
    pub key: String,
    pub shape: Vec<usize>,
    /// Byte offset in the shard.
    pub offset: u64,
    pub bytes: u64,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self> {
        let manifest: Manifest = serde_json::from_str(text)
            .map_err(|e| TavError::InvalidInput(format!("the model manifest is not valid: {e}")))?;
        if manifest.format != FORMAT {
            return Err(TavError::InvalidInput(format!(
                "the model manifest has format `{}`, this tav reads `{FORMAT}`: pack the model again with this version's `tav pack-web`",
                manifest.format
            )));
        }
        Ok(manifest)
    }

    /// Total bytes to download (shards and files).
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum::<u64>()
            + self.files.iter().map(|f| f.bytes).sum::<u64>()
    }

    /// The largest tensor, in elements: what the GPU must be able to bind at once (as f32).
    pub fn largest_tensor(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| &s.tensors)
            .map(|t| t.bytes / 2)
            .max()
            .unwrap_or(0)
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tensors kept on the host: CLIP's token table is gathered on the CPU (at SD size it is
/// over WebGPU's binding limit).
fn kept_on_host(key: &str) -> bool {
    key.ends_with("token_embedding.weight")
}

/// The weights streamed so far: on the GPU (flat, f16 as streamed), a few on the host. They
/// stay f16 on every adapter: without `shader-f16` each is widened to f32 where it is used
/// (`layers::in_dtype_of`).
pub struct StreamedWeights {
    device: Device,
    on_device: HashMap<String, DeviceTensor>,
    /// Host tensors in f16 until the model takes them (moved, not copied).
    on_host: RefCell<HashMap<String, HostTensorF16>>,
    /// Bytes of the largest host buffer held at once while streaming.
    pub peak_host_bytes: usize,
    /// Whether tensors were uploaded since the last [`Self::take_upload_marker`].
    uploads_pending: bool,
}

impl StreamedWeights {
    pub fn new(device: &Device) -> Self {
        Self {
            device: device.clone(),
            on_device: HashMap::new(),
            on_host: RefCell::default(),
            peak_host_bytes: 0,
            uploads_pending: false,
        }
    }

    /// A one-value f32 tensor made after the uploads so far (`None` if there were none):
    /// [`wait_for_gpu`] on it waits for all of them, since the GPU queue runs in order. (Not
    /// the last upload itself: reading an f16 tensor back would need `shader-f16`.)
    pub fn take_upload_marker(&mut self) -> Option<Tensor<1>> {
        std::mem::take(&mut self.uploads_pending).then(|| Tensor::zeros([1], &self.device))
    }

    /// Takes a whole tensor's bytes (moved, never copied: the host holds each tensor once).
    fn store(&mut self, tensor: &PackedTensor, raw: Vec<u8>) {
        if kept_on_host(&tensor.key) {
            self.on_host.borrow_mut().insert(
                tensor.key.clone(),
                HostTensorF16 {
                    shape: tensor.shape.clone(),
                    bytes: raw,
                },
            );
            return;
        }
        let n = raw.len() / 2;
        let data = TensorData::from_bytes_vec(raw, [n], DType::F16);
        let flat = Tensor::<1>::from_data(data, (&self.device, DType::F16));
        self.uploads_pending = true;
        self.on_device.insert(
            tensor.key.clone(),
            DeviceTensor {
                shape: tensor.shape.clone(),
                flat,
            },
        );
    }

    /// A source over the weights of one component (keys without the component prefix).
    pub fn component<'a>(&'a self, manifest: &'a Manifest, component: &str) -> ComponentSource<'a> {
        let keys = manifest
            .shards
            .iter()
            .filter(|s| s.component == component)
            .flat_map(|s| s.tensors.iter().map(|t| t.key.clone()))
            .collect();
        ComponentSource {
            weights: self,
            name: format!("{} ({component})", manifest.name),
            keys,
        }
    }

    /// Drops one component's tensors (after its model holds them).
    pub fn release(&mut self, manifest: &Manifest, component: &str) {
        for t in manifest
            .shards
            .iter()
            .filter(|s| s.component == component)
            .flat_map(|s| &s.tensors)
        {
            self.on_device.remove(&t.key);
            self.on_host.get_mut().remove(&t.key);
        }
    }
}

/// Waits until the GPU has computed (or received) `t`, and so everything queued before it,
/// by reading one value back: a browser awaits this between shards (nothing the uploads
/// staged stays in host memory) and between sampling steps (progress is real). `what` names
/// the work in the error.
pub async fn wait_for_gpu<const D: usize>(t: Tensor<D>, what: &str) -> Result<()> {
    let mut one = t;
    for dim in 0..D {
        one = one.narrow(dim, 0, 1);
    }
    one.into_data_async()
        .await
        .map_err(|e| TavError::Device(format!("{what} failed: {e:?}")))?;
    Ok(())
}

/// Feeds one shard's bytes, in chunks of any size, into [`StreamedWeights`].
pub struct ShardStream {
    shard: Shard,
    /// Bytes of the shard seen so far.
    position: u64,
    /// Index of the tensor being filled.
    next: usize,
    pending: Vec<u8>,
    hasher: Sha256,
}

impl ShardStream {
    pub fn new(shard: &Shard) -> Self {
        Self {
            shard: shard.clone(),
            position: 0,
            next: 0,
            pending: Vec::new(),
            hasher: Sha256::new(),
        }
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Takes the next chunk; every tensor it completes goes to the GPU now.
    pub fn feed(&mut self, mut chunk: &[u8], weights: &mut StreamedWeights) -> Result<()> {
        if self.position + chunk.len() as u64 > self.shard.bytes {
            return Err(TavError::InvalidInput(format!(
                "shard {} is longer than its manifest says ({} bytes): the download is corrupt",
                self.shard.file, self.shard.bytes
            )));
        }
        self.hasher.update(chunk);
        while !chunk.is_empty() {
            let Some(tensor) = self.shard.tensors.get(self.next).cloned() else {
                // Padding after the last tensor.
                self.position += chunk.len() as u64;
                return Ok(());
            };
            let end = tensor.offset + tensor.bytes;
            if self.position < tensor.offset {
                let skip = (tensor.offset - self.position).min(chunk.len() as u64) as usize;
                chunk = &chunk[skip..];
                self.position += skip as u64;
                continue;
            }
            if self.pending.is_empty() {
                self.pending.reserve_exact(tensor.bytes as usize);
            }
            let take = (end - self.position).min(chunk.len() as u64) as usize;
            self.pending.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            self.position += take as u64;
            weights.peak_host_bytes = weights.peak_host_bytes.max(self.pending.capacity());
            if self.position == end {
                weights.store(&tensor, std::mem::take(&mut self.pending));
                self.next += 1;
            }
        }
        Ok(())
    }

    /// Ends the shard: every byte arrived and the SHA-256 matches.
    pub fn finish(self) -> Result<()> {
        if self.position != self.shard.bytes {
            return Err(TavError::InvalidInput(format!(
                "shard {} ended after {} of {} bytes: the download is incomplete",
                self.shard.file, self.position, self.shard.bytes
            )));
        }
        let got = hex(&self.hasher.finalize());
        if got != self.shard.sha256 {
            return Err(TavError::InvalidInput(format!(
                "shard {} has SHA-256 {got}, the manifest says {}: the download is corrupt",
                self.shard.file, self.shard.sha256
            )));
        }
        Ok(())
    }
}

/// One component's streamed tensors as a [`TensorSource`].
pub struct ComponentSource<'a> {
    weights: &'a StreamedWeights,
    name: String,
    keys: Vec<String>,
}

impl TensorSource for ComponentSource<'_> {
    fn origin(&self) -> String {
        self.name.clone()
    }

    fn fetch(&self, key: &str) -> Result<Option<HostTensor>> {
        Ok(self.weights.on_host.borrow().get(key).map(|t| {
            let data = crate::weights::decode_floats(&t.bytes, safetensors::Dtype::F16)
                .expect("f16 decodes");
            HostTensor::new(t.shape.clone(), data)
        }))
    }

    fn take_host_f16(&self, key: &str) -> Option<HostTensorF16> {
        self.weights.on_host.borrow_mut().remove(key)
    }

    fn fetch_on_device(&self, key: &str) -> Result<Option<DeviceTensor>> {
        Ok(self.weights.on_device.get(key).cloned())
    }

    fn keys(&self) -> Vec<String> {
        self.keys.clone()
    }

    fn contains(&self, key: &str) -> bool {
        self.weights.on_device.contains_key(key) || self.weights.on_host.borrow().contains_key(key)
    }
}

/// Builds every model from a fully streamed `weights` and the small files (tokenizer),
/// releasing each component's streamed tensors once its model holds them.
pub fn build_models(
    manifest: &Manifest,
    weights: &mut StreamedWeights,
    files: &MemoryFiles,
    temporal_seed: u64,
) -> Result<Models> {
    let device = weights.device.clone();
    let config = |name: &str| -> Result<serde_json::Value> {
        manifest.configs.get(name).cloned().ok_or_else(|| {
            TavError::InvalidInput(format!("the model manifest has no `{name}` config"))
        })
    };
    let clip_config: ClipConfig = parse_config(config("text_encoder")?, "text_encoder")?;
    let vae_config: VaeConfig = parse_config(config("vae")?, "vae")?;
    let unet_config: UNetConfig = parse_config(config("unet")?, "unet")?;
    let scheduler: SchedulerConfig = parse_config(config("scheduler")?, "scheduler")?;
    clip_config.validate("text_encoder")?;
    vae_config.validate("vae")?;
    unet_config.validate("unet")?;

    let tokenizer = load_tokenizer(files, clip_config.max_position_embeddings)?;
    let mut report = Vec::new();
    let text_encoder = {
        let source = weights.component(manifest, "text_encoder");
        let p = ParamBuilder::from_source(&source, &device);
        let model = ClipTextEncoder::load(&p, &clip_config)?;
        report.push(component_report("text_encoder", &source, String::new(), &p));
        model
    };
    weights.release(manifest, "text_encoder");
    let vae = {
        let source = weights.component(manifest, "vae");
        let p = ParamBuilder::from_source(&source, &device);
        let model = Vae::load(&p, &vae_config)?;
        report.push(component_report("vae", &source, String::new(), &p));
        model
    };
    weights.release(manifest, "vae");
    let unet = {
        let source = weights.component(manifest, "unet");
        let p =
            ParamBuilder::from_source(&source, &device).with_fallback(temporal_init(temporal_seed));
        let model = UNet3D::load(&p, &unet_config)?;
        report.push(component_report(
            "unet",
            &source,
            manifest.unet_fingerprint.clone(),
            &p,
        ));
        model
    };
    weights.release(manifest, "unet");
    // Tuned layers learn in f32 whatever the storage of the rest.
    let trainable = unet.trainable_ids();
    let unet = params_to_f32(unet, &trainable);
    Ok(Models {
        tokenizer,
        text_encoder,
        vae,
        unet,
        schedule: Schedule::new(&scheduler)?,
        unet_config,
        vae_config,
        clip_config,
        report,
        unmapped: Vec::new(),
        notes: Vec::new(),
    })
}

fn parse_config<T: for<'de> Deserialize<'de>>(value: serde_json::Value, name: &str) -> Result<T> {
    serde_json::from_value(value).map_err(|e| TavError::Config {
        path: format!("manifest.json ({name})"),
        reason: e.to_string(),
    })
}

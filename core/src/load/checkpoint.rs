//! Loading a diffusers checkpoint folder as users have it (`model_index.json`, `unet/`,
//! `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), into tav's models.
//!
//! Files are reached through [`CheckpointFiles`], so the same code serves a folder on disk
//! and (later) files fetched by a browser.

use std::collections::HashSet;

use burn::tensor::Device;

use crate::clip::ClipTextEncoder;
use crate::config::{ClipConfig, SchedulerConfig, UNetConfig, VaeConfig, parse_json};
use crate::error::{Result, TavError};
use crate::lora::{Lora, Patched, Patches, Target};
use crate::precision::weights_to_f16;
use crate::schedule::Schedule;
use crate::single_file::{Component, Configs, SingleFile, UnetLayout};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{UNet3D, temporal_init};
use crate::vae::Vae;
use crate::weights::{LayeredSource, ParamBuilder, SafetensorsFile, TensorSource};

/// Read access to the files of a checkpoint, by path relative to its root.
pub trait CheckpointFiles {
    /// The file's bytes, or `None` if it does not exist.
    fn read(&self, relative: &str) -> Result<Option<Vec<u8>>>;
    /// How to show `relative` to a user (e.g. the full path).
    fn show(&self, relative: &str) -> String;
}

/// A checkpoint folder on disk.
#[cfg(not(target_arch = "wasm32"))]
pub struct Folder(pub std::path::PathBuf);

#[cfg(not(target_arch = "wasm32"))]
impl CheckpointFiles for Folder {
    fn read(&self, relative: &str) -> Result<Option<Vec<u8>>> {
        let path = self.0.join(relative);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TavError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn show(&self, relative: &str) -> String {
        self.0.join(relative).display().to_string()
    }
}

/// Checkpoint files held in memory (e.g. fetched by a browser), by relative path.
#[derive(Debug, Clone, Default)]
pub struct MemoryFiles {
    pub name: String,
    pub files: std::collections::HashMap<String, Vec<u8>>,
}

impl CheckpointFiles for MemoryFiles {
    fn read(&self, relative: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.get(relative).cloned())
    }

    fn show(&self, relative: &str) -> String {
        format!("{}/{relative}", self.name)
    }
}

/// Tensors in the weights files that are known not to be parameters.
const KNOWN_BUFFERS: [&str; 1] = ["text_model.embeddings.position_ids"];

/// What one component's loading found.
#[derive(Debug, Clone)]
pub struct ComponentReport {
    pub component: String,
    pub file: String,
    pub tensors: usize,
    pub parameters: usize,
    /// Tensors in the file that the model did not use (reported, never silently dropped).
    pub unexpected: Vec<String>,
    /// Fingerprint of the component's own weights file (see [`crate::delta::fingerprint`]).
    pub fingerprint: String,
}

/// Options for loading a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A weights variant such as `fp16` (`*.fp16.safetensors`). When `None`, the plain
    /// files are used, or the fp16 variant if only that exists.
    pub variant: Option<String>,
    /// Seed of the new temporal layers' initial values (when no temporal file is given).
    pub temporal_seed: u64,
    /// `--f16`: frozen weights rounded to f16 on the host as they load (the UNet's trainable
    /// layers stay f32), so the GPU never holds the f32 model. Needs f16 storage.
    pub f16: bool,
    /// LoRAs merged into the UNet's and the text encoder's frozen weights as they load.
    pub loras: Vec<std::sync::Arc<Lora>>,
}

impl LoadOptions {
    /// A builder over `source` that stores in f16 the keys `frozen` names, under `--f16`.
    fn builder<'a>(
        &self,
        source: &'a dyn TensorSource,
        device: &Device,
        frozen: fn(&str) -> bool,
    ) -> ParamBuilder<'a> {
        let p = ParamBuilder::from_source(source, device);
        if self.f16 {
            p.with_f16_storage(frozen)
        } else {
            p
        }
    }
}

/// Every tensor of the text encoder and the VAE is frozen.
fn all_frozen(_: &str) -> bool {
    true
}

/// The UNet's frozen tensors: all but the layers tuning changes.
fn unet_frozen(key: &str) -> bool {
    !crate::unet::is_trainable(key)
}

/// Everything of a checkpoint, loaded.
pub struct Models {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextEncoder,
    pub vae: Vae,
    pub unet: UNet3D,
    pub schedule: Schedule,
    pub unet_config: UNetConfig,
    pub vae_config: VaeConfig,
    pub clip_config: ClipConfig,
    pub report: Vec<ComponentReport>,
    /// Tensors of a single-file checkpoint that map to no parameter (reported, not used).
    pub unmapped: Vec<String>,
    /// What a user should know of how the model was read (defaults taken, EMA weights).
    pub notes: Vec<String>,
}

pub fn required(files: &dyn CheckpointFiles, relative: &str, what: &str) -> Result<Vec<u8>> {
    files.read(relative)?.ok_or_else(|| TavError::MissingFile {
        path: files.show(relative),
        what: what.to_string(),
    })
}

fn config<T: for<'de> serde::Deserialize<'de>>(
    files: &dyn CheckpointFiles,
    relative: &str,
) -> Result<T> {
    let bytes = required(files, relative, "component config")?;
    let text = String::from_utf8(bytes).map_err(|_| TavError::Config {
        path: files.show(relative),
        reason: "not UTF-8 text".into(),
    })?;
    parse_json(&files.show(relative), &text)
}

/// The three model configs of a checkpoint folder (UNet, VAE, text encoder), without
/// reading any weights: what a memory plan needs.
pub fn read_configs(files: &dyn CheckpointFiles) -> Result<(UNetConfig, VaeConfig, ClipConfig)> {
    Ok((
        config(files, "unet/config.json")?,
        config(files, "vae/config.json")?,
        config(files, "text_encoder/config.json")?,
    ))
}

/// Reads `component`'s weights: `stem.safetensors`, or its variant `stem.VARIANT.safetensors`.
pub fn weights_file(
    files: &dyn CheckpointFiles,
    component: &str,
    stem: &str,
    variant: Option<&str>,
) -> Result<SafetensorsFile> {
    let plain = format!("{component}/{stem}.safetensors");
    let candidates: Vec<String> = match variant {
        Some(v) => vec![format!("{component}/{stem}.{v}.safetensors")],
        None => vec![
            plain.clone(),
            format!("{component}/{stem}.fp16.safetensors"),
        ],
    };
    for candidate in &candidates {
        if let Some(bytes) = files.read(candidate)? {
            return SafetensorsFile::from_bytes(files.show(candidate), bytes);
        }
    }
    let bin = format!("{component}/{stem}.bin");
    let hint = if files.read(&bin)?.is_some() {
        " (only a PyTorch .bin file is there: tav reads safetensors; convert it first)"
    } else {
        ""
    };
    Err(TavError::MissingFile {
        path: files.show(&candidates[0]),
        what: format!("{component} weights{hint}"),
    })
}

/// What a component's loading found: its parameters, the unused tensors of `source`.
pub fn report(
    component: &str,
    source: &dyn TensorSource,
    fingerprint: String,
    p: &ParamBuilder,
) -> ComponentReport {
    let entries = p.entries();
    let unexpected: Vec<String> = p
        .unused_keys()
        .into_iter()
        .filter(|k| !KNOWN_BUFFERS.contains(&k.as_str()))
        .collect();
    ComponentReport {
        component: component.to_string(),
        file: source.origin(),
        tensors: entries.len(),
        parameters: entries
            .iter()
            .map(|e| e.shape.iter().product::<usize>())
            .sum(),
        unexpected,
        fingerprint,
    }
}

/// Refuses components that cannot work together, naming the widths: the text encoder's
/// output feeds the UNet's cross-attention, and the VAE's latents are the UNet's input and
/// output. (Caught here, not as a matrix-shape failure deep inside the first forward.)
pub fn check_components_fit(configs: &Configs, origin: &str) -> Result<()> {
    let (unet, vae, clip) = (&configs.unet, &configs.vae, &configs.clip);
    if clip.hidden_size != unet.cross_attention_dim {
        return Err(TavError::Config {
            path: origin.to_string(),
            reason: format!(
                "the text encoder is {} wide (text_encoder hidden_size) but the UNet's \
                 cross-attention takes {} (unet cross_attention_dim): they are from different \
                 models",
                clip.hidden_size, unet.cross_attention_dim
            ),
        });
    }
    for (field, channels) in [
        ("in_channels", unet.in_channels),
        ("out_channels", unet.out_channels),
    ] {
        if channels != vae.latent_channels {
            return Err(TavError::Config {
                path: origin.to_string(),
                reason: format!(
                    "the VAE's latents have {} channels (vae latent_channels) but the UNet's \
                     {field} is {channels}: they are from different models",
                    vae.latent_channels
                ),
            });
        }
    }
    Ok(())
}

/// Checks the three components' sources against `configs`' models without loading them:
/// every tensor present (temporal layers may be absent: they are initialised) with its
/// shape, LoRA patches fitting their layers. Returns each component's report (unused
/// tensors included). What `tav pack-web` runs before it packs.
pub fn verify_components(
    text: &dyn TensorSource,
    vae: &dyn TensorSource,
    unet: &dyn TensorSource,
    configs: &Configs,
    device: &Device,
) -> Result<Vec<ComponentReport>> {
    check_components_fit(configs, &unet.origin())?;
    configs.unet.validate(&unet.origin())?;
    configs.vae.validate(&vae.origin())?;
    configs.clip.validate(&text.origin())?;
    let text = &ClipNames::of(text);
    let p = ParamBuilder::verifying(text, device);
    ClipTextEncoder::load(&p, &configs.clip)?;
    let r_text = report("text_encoder", text, String::new(), &p);
    let p = ParamBuilder::verifying(vae, device);
    Vae::load(&p, &configs.vae)?;
    let r_vae = report("vae", vae, String::new(), &p);
    let p = ParamBuilder::verifying(unet, device).with_fallback(temporal_init(0));
    UNet3D::load(&p, &configs.unet)?;
    let r_unet = report("unet", unet, String::new(), &p);
    Ok(vec![r_text, r_vae, r_unet])
}

/// Loads the tokenizer from `tokenizer/tokenizer.json`, or `vocab.json` + `merges.txt`.
pub fn load_tokenizer(files: &dyn CheckpointFiles, max_len: usize) -> Result<ClipTokenizer> {
    if let Some(json) = files.read("tokenizer/tokenizer.json")? {
        return ClipTokenizer::from_tokenizer_json(
            &files.show("tokenizer/tokenizer.json"),
            &json,
            max_len,
        );
    }
    let vocab = required(
        files,
        "tokenizer/vocab.json",
        "tokenizer vocabulary (or tokenizer.json)",
    )?;
    let merges = required(
        files,
        "tokenizer/merges.txt",
        "tokenizer merges (or tokenizer.json)",
    )?;
    let merges = String::from_utf8(merges).map_err(|_| TavError::Tokenizer {
        path: files.show("tokenizer/merges.txt"),
        reason: "not UTF-8 text".into(),
    })?;
    ClipTokenizer::from_vocab_merges(&files.show("tokenizer"), &vocab, &merges, max_len)
}

/// Loads the text encoder from `text_encoder/`.
pub fn load_text_encoder(
    files: &dyn CheckpointFiles,
    options: &LoadOptions,
    device: &Device,
) -> Result<(ClipTextEncoder, ClipConfig, ComponentReport)> {
    let cfg: ClipConfig = config(files, "text_encoder/config.json")?;
    let file = weights_file(files, "text_encoder", "model", options.variant.as_deref())?;
    let (model, report) = text_encoder_from(&file, &cfg, options, device)?;
    Ok((model, cfg, report))
}

/// The text encoder of `cfg` from `source`, with `options`' LoRAs merged in.
fn text_encoder_from(
    source: &dyn TensorSource,
    cfg: &ClipConfig,
    options: &LoadOptions,
    device: &Device,
) -> Result<(ClipTextEncoder, ComponentReport)> {
    let patches = text_encoder_patches(options, cfg, device)?;
    let named = ClipNames::of(source);
    let patched = Patched {
        base: &named,
        patches: &patches,
    };
    let p = options.builder(&patched, device, all_frozen);
    let model = ClipTextEncoder::load(&p, cfg)?;
    let fingerprint = crate::delta::fingerprint(source);
    Ok((model, report("text_encoder", source, fingerprint, &p)))
}

/// A CLIP text encoder's tensors under the names transformers 4 gives them
/// (`text_model.encoder.layers.N…`, what tav's model asks for), whether the file was saved by
/// transformers 4 or by transformers 5, which names them without `text_model.`.
pub struct ClipNames<'a> {
    inner: &'a dyn TensorSource,
    /// The file has no `text_model.` names (transformers 5).
    unprefixed: bool,
}

impl<'a> ClipNames<'a> {
    pub fn of(inner: &'a dyn TensorSource) -> Self {
        let keys = inner.keys();
        let unprefixed = !keys.is_empty() && !keys.iter().any(|k| k.starts_with("text_model."));
        Self { inner, unprefixed }
    }

    fn inner_key<'k>(&self, key: &'k str) -> &'k str {
        if self.unprefixed {
            key.strip_prefix("text_model.").unwrap_or(key)
        } else {
            key
        }
    }
}

impl TensorSource for ClipNames<'_> {
    fn origin(&self) -> String {
        self.inner.origin()
    }

    fn fetch(&self, key: &str) -> Result<Option<crate::weights::HostTensor>> {
        self.inner.fetch(self.inner_key(key))
    }

    fn keys(&self) -> Vec<String> {
        let keys = self.inner.keys();
        if self.unprefixed {
            keys.into_iter()
                .map(|k| format!("text_model.{k}"))
                .collect()
        } else {
            keys
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.inner.contains(self.inner_key(key))
    }

    fn shape_of(&self, key: &str) -> Result<Option<Vec<usize>>> {
        self.inner.shape_of(self.inner_key(key))
    }

    fn fetch_on_device(&self, key: &str) -> Result<Option<crate::weights::DeviceTensor>> {
        self.inner.fetch_on_device(self.inner_key(key))
    }

    fn take_host_f16(&self, key: &str) -> Option<crate::weights::HostTensorF16> {
        self.inner.take_host_f16(self.inner_key(key))
    }
}

/// The patches `options`' LoRAs make to the text encoder of `cfg` (none without LoRAs).
pub fn text_encoder_patches(
    options: &LoadOptions,
    cfg: &ClipConfig,
    device: &Device,
) -> Result<Patches> {
    lora_patches(
        options,
        Target::TextEncoder,
        device,
        |p| ClipTextEncoder::load(p, cfg).map(|_| ()),
        None,
    )
}

/// The patches `options`' LoRAs make to the 2D UNet of `cfg` (none without LoRAs).
pub fn unet_patches(options: &LoadOptions, cfg: &UNetConfig, device: &Device) -> Result<Patches> {
    lora_patches(
        options,
        Target::Unet,
        device,
        |p| UNet3D::load(p, cfg).map(|_| ()),
        Some(&UnetLayout::of(cfg)),
    )
}

/// The patches `options`' LoRAs make to `target`, whose parameters `shapes` lists.
fn lora_patches(
    options: &LoadOptions,
    target: Target,
    device: &Device,
    shapes: impl Fn(&ParamBuilder) -> Result<()>,
    layout: Option<&UnetLayout>,
) -> Result<Patches> {
    if options.loras.is_empty() {
        return Ok(Patches::default());
    }
    let p = ParamBuilder::shapes_only(device);
    shapes(&p)?;
    let loras: Vec<&Lora> = options.loras.iter().map(|l| l.as_ref()).collect();
    Patches::resolve(&loras, target, &p.entries(), layout)
}

/// Loads the VAE from `vae/`.
pub fn load_vae(
    files: &dyn CheckpointFiles,
    options: &LoadOptions,
    device: &Device,
) -> Result<(Vae, VaeConfig, ComponentReport)> {
    let cfg: VaeConfig = config(files, "vae/config.json")?;
    let file = weights_file(
        files,
        "vae",
        "diffusion_pytorch_model",
        options.variant.as_deref(),
    )?;
    let (model, report) = vae_from(&file, &cfg, options, device)?;
    Ok((model, cfg, report))
}

/// The VAE of `cfg` from `source` (LoRAs do not touch it).
fn vae_from(
    source: &dyn TensorSource,
    cfg: &VaeConfig,
    options: &LoadOptions,
    device: &Device,
) -> Result<(Vae, ComponentReport)> {
    let p = options.builder(source, device, all_frozen);
    let model = Vae::load(&p, cfg)?;
    let fingerprint = crate::delta::fingerprint(source);
    Ok((model, report("vae", source, fingerprint, &p)))
}

/// The text encoder of `text_encoder/` with the entries naming its tensors (for training
/// on from it).
pub fn load_text_encoder_entries(
    files: &dyn CheckpointFiles,
    device: &Device,
) -> Result<(ClipTextEncoder, Vec<crate::weights::ParamEntry>)> {
    let cfg: ClipConfig = config(files, "text_encoder/config.json")?;
    let file = weights_file(files, "text_encoder", "model", None)?;
    let p = ParamBuilder::from_source(&file, device);
    let model = ClipTextEncoder::load(&p, &cfg)?;
    Ok((model, p.entries()))
}

/// The VAE of `vae/` with the entries naming its tensors (for training on from it).
pub fn load_vae_entries(
    files: &dyn CheckpointFiles,
    device: &Device,
) -> Result<(Vae, Vec<crate::weights::ParamEntry>)> {
    let cfg: VaeConfig = config(files, "vae/config.json")?;
    let file = weights_file(files, "vae", "diffusion_pytorch_model", None)?;
    let p = ParamBuilder::from_source(&file, device);
    let model = Vae::load(&p, &cfg)?;
    Ok((model, p.entries()))
}

/// Loads the 2D UNet from `unet/` and inflates it. Temporal layers come from `temporal`
/// where given (keys are the reference's module paths), else are initialised as the
/// reference initialises them.
pub fn load_unet(
    files: &dyn CheckpointFiles,
    temporal: Option<&SafetensorsFile>,
    options: &LoadOptions,
    device: &Device,
) -> Result<(UNet3D, UNetConfig, ComponentReport)> {
    let cfg: UNetConfig = config(files, "unet/config.json")?;
    let file = weights_file(
        files,
        "unet",
        "diffusion_pytorch_model",
        options.variant.as_deref(),
    )?;
    let (model, report) = unet_from(&file, temporal, &cfg, options, device)?;
    Ok((model, cfg, report))
}

/// The 2D UNet of `cfg` from `source`, LoRAs merged in, inflated (temporal layers from
/// `temporal` or initialised). Its fingerprint is the 2D weights' alone.
fn unet_from(
    source: &dyn TensorSource,
    temporal: Option<&SafetensorsFile>,
    cfg: &UNetConfig,
    options: &LoadOptions,
    device: &Device,
) -> Result<(UNet3D, ComponentReport)> {
    let patches = unet_patches(options, cfg, device)?;
    let patched = Patched {
        base: source,
        patches: &patches,
    };
    let mut layers: Vec<&dyn TensorSource> = vec![&patched];
    if let Some(t) = temporal {
        layers.insert(0, t);
    }
    let layered = LayeredSource { layers };
    let p = options
        .builder(&layered, device, unet_frozen)
        .with_fallback(temporal_init(options.temporal_seed));
    let model = UNet3D::load(&p, cfg)?;
    let fingerprint = crate::delta::fingerprint(source);
    Ok((model, report("unet", &layered, fingerprint, &p)))
}

/// The DDPM/DDIM schedule's config, `scheduler/scheduler_config.json`.
pub fn read_scheduler_config(files: &dyn CheckpointFiles) -> Result<SchedulerConfig> {
    config(files, "scheduler/scheduler_config.json")
}

/// Loads the DDPM/DDIM schedule from `scheduler/scheduler_config.json`.
pub fn load_schedule(files: &dyn CheckpointFiles) -> Result<Schedule> {
    Schedule::new(&read_scheduler_config(files)?)
}

impl Models {
    /// Every component's frozen weights stored in f16; the UNet's trainable ones stay f32.
    pub fn weights_to_f16(mut self, device: &Device) -> Result<Self> {
        let none = HashSet::new();
        self.text_encoder = weights_to_f16(self.text_encoder, &none, device)?;
        self.vae = weights_to_f16(self.vae, &none, device)?;
        self.unet = self.unet.frozen_weights_to_f16(device)?;
        Ok(self)
    }

    /// Fingerprint of the base UNet weights: what tuned weights are tied to.
    pub fn base_fingerprint(&self) -> &str {
        self.report
            .iter()
            .find(|r| r.component == "unet")
            .map_or("", |r| r.fingerprint.as_str())
    }

    /// Loads every component of the checkpoint.
    pub fn load(
        files: &dyn CheckpointFiles,
        temporal: Option<&SafetensorsFile>,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        required(
            files,
            "model_index.json",
            "the checkpoint's model_index.json (is this a diffusers folder?)",
        )?;
        if options.f16 && !crate::precision::supports_f16(device) {
            return Err(crate::precision::no_f16_error());
        }
        let (unet_config, vae_config, clip_config) = read_configs(files)?;
        check_components_fit(
            &Configs {
                unet: unet_config,
                vae: vae_config,
                clip: clip_config,
                scheduler: read_scheduler_config(files)?,
            },
            &files.show(""),
        )?;
        let (text_encoder, clip_config, r_text) = load_text_encoder(files, options, device)?;
        let tokenizer = load_tokenizer(files, clip_config.max_position_embeddings)?;
        let (vae, vae_config, r_vae) = load_vae(files, options, device)?;
        let (unet, unet_config, r_unet) = load_unet(files, temporal, options, device)?;
        let schedule = load_schedule(files)?;
        Ok(Self {
            tokenizer,
            text_encoder,
            vae,
            unet,
            schedule,
            unet_config,
            vae_config,
            clip_config,
            report: vec![r_text, r_vae, r_unet],
            unmapped: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// Loads every component of a single-file checkpoint (see [`crate::single_file`]), its
    /// keys already mapped for `configs`; the tokenizer comes from elsewhere (the bundled
    /// CLIP tokenizer, or a diffusers folder's).
    pub fn load_single_file(
        single: &SingleFile,
        configs: &Configs,
        tokenizer: ClipTokenizer,
        temporal: Option<&SafetensorsFile>,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        if options.f16 && !crate::precision::supports_f16(device) {
            return Err(crate::precision::no_f16_error());
        }
        let path = single.path();
        configs.unet.validate(path)?;
        configs.vae.validate(path)?;
        configs.clip.validate(path)?;
        check_components_fit(configs, path)?;
        let text = single.source(Component::TextEncoder);
        let (text_encoder, r_text) = text_encoder_from(&text, &configs.clip, options, device)?;
        let vae_source = single.source(Component::Vae);
        let (vae, r_vae) = vae_from(&vae_source, &configs.vae, options, device)?;
        let unet_source = single.source(Component::Unet);
        let (unet, r_unet) = unet_from(&unet_source, temporal, &configs.unet, options, device)?;
        Ok(Self {
            tokenizer,
            text_encoder,
            vae,
            unet,
            schedule: Schedule::new(&configs.scheduler)?,
            unet_config: configs.unet.clone(),
            vae_config: configs.vae.clone(),
            clip_config: configs.clip.clone(),
            report: vec![r_text, r_vae, r_unet],
            unmapped: single.unmapped.clone(),
            notes: single.notes.clone(),
        })
    }
}

//! `tav pack-web MODEL OUT_DIR`: a checkpoint (folder or single file, LoRAs merged) packed for the browser
//! (see `tav_core::pack`), written atomically file by file.

use super::prelude::*;

use std::path::Path;

use std::collections::BTreeMap;

use burn::tensor::Device;
use tav_core::checkpoint::{
    CheckpointFiles, Folder, LoadOptions, read_configs, read_scheduler_config,
    text_encoder_patches, unet_patches, verify_components, weights_file,
};
use tav_core::lora::{Lora, Patched, Patches};
use tav_core::pack::{PackOptions, PackParts, pack, pack_parts};
use tav_core::single_file::{Component, Configs};
use tav_core::stream::Manifest;
use tav_core::weights::SafetensorsFile;
use tav_core::weights::TensorSource;
use tav_core::{Result, TavError};

use crate::job::write_atomic;
use crate::models::{LoraSpec, open_single_file, read_loras};

/// What `tav pack-web` packs: the model (a folder or a single file) and its LoRAs.
pub struct PackSpec<'a> {
    pub model: &'a Path,
    pub out: &'a Path,
    pub variant: Option<&'a str>,
    pub shard_bytes: u64,
    pub temporal: Option<&'a Path>,
    pub model_config: Option<&'a Path>,
    pub loras: &'a [LoraSpec],
}

/// Packs the model into `out`, LoRAs merged into the shards. Before anything is written the
/// model goes through `tav check`'s and `tav tune`'s checks: configs against every tensor's
/// presence and shape, components that fit each other, LoRAs that fit their layers; unused
/// and unmapped tensors and the single file's notes are printed.
pub fn pack_web(spec: &PackSpec) -> Result<Manifest> {
    let temporal = spec.temporal.map(SafetensorsFile::open).transpose()?;
    let name = std::fs::canonicalize(spec.model)
        .ok()
        .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let options = PackOptions {
        name,
        variant: spec.variant,
        shard_bytes: spec.shard_bytes,
        temporal: temporal.as_ref(),
    };
    let out = spec.out;
    let mut write = |relative: &str, bytes: &[u8]| write_atomic(&out.join(relative), bytes);
    // Shapes only: nothing is allocated on it.
    let device = Device::flex();
    let loras = read_loras(spec.loras)?;
    if spec.model.is_dir() {
        let files = Folder(spec.model.to_path_buf());
        tav_core::checkpoint::required(
            &files,
            "model_index.json",
            "the checkpoint's model_index.json (is this a diffusers folder?)",
        )?;
        let (unet_cfg, vae_cfg, clip_cfg) = read_configs(&files)?;
        let configs = Configs {
            unet: unet_cfg,
            vae: vae_cfg,
            clip: clip_cfg,
            scheduler: read_scheduler_config(&files)?,
        };
        let text = weights_file(&files, "text_encoder", "model", spec.variant)?;
        let vae = weights_file(&files, "vae", "diffusion_pytorch_model", spec.variant)?;
        let unet = weights_file(&files, "unet", "diffusion_pytorch_model", spec.variant)?;
        let merged = Merged::new(loras, &configs, &device)?;
        let parts = merged.parts(&configs, &text, &vae, &unet, &files)?;
        say_reports(&verify_components(
            &parts.text,
            parts.vae,
            &parts.unet,
            &configs,
            &device,
        )?);
        if spec.loras.is_empty() {
            return pack(&files, &options, &mut write);
        }
        return pack_parts(&parts.as_parts(), &options, &mut write);
    }
    if !spec.model.exists() {
        return Err(TavError::MissingFile {
            path: spec.model.display().to_string(),
            what: "the model: a diffusers folder or a .safetensors checkpoint".into(),
        });
    }
    let opened = open_single_file(spec.model, spec.model_config, &device)?;
    println!(
        "single-file checkpoint {}: {}",
        spec.model.display(),
        opened.configs_note
    );
    for note in &opened.single.notes {
        println!("{}", crate::ui::printable(note));
    }
    for key in &opened.single.unmapped {
        println!(
            "warning: {} has a tensor that maps to no layer of SD v1.x: `{}` (not packed)",
            spec.model.display(),
            crate::ui::printable(key)
        );
    }
    let text = opened.single.source(Component::TextEncoder);
    let vae = opened.single.source(Component::Vae);
    let unet = opened.single.source(Component::Unet);
    let merged = Merged::new(loras, &opened.configs, &device)?;
    let parts = merged.parts(
        &opened.configs,
        &text,
        &vae,
        &unet,
        opened.tokenizer_files.as_ref(),
    )?;
    say_reports(&verify_components(
        &parts.text,
        parts.vae,
        &parts.unet,
        &opened.configs,
        &device,
    )?);
    pack_parts(&parts.as_parts(), &options, &mut write)
}

/// Prints what the check found unused in each component's file.
fn say_reports(reports: &[tav_core::checkpoint::ComponentReport]) {
    for r in reports {
        for extra in &r.unexpected {
            println!(
                "warning: {} has an unexpected tensor `{}` (not packed)",
                r.file,
                crate::ui::printable(extra)
            );
        }
    }
}

/// The LoRA patches of the UNet and the text encoder.
struct Merged {
    unet: Patches,
    text: Patches,
}

/// The parts as patched sources: they borrow the patches, so they live in here.
struct PatchedParts<'a> {
    configs: BTreeMap<String, serde_json::Value>,
    text: Patched<'a>,
    vae: &'a dyn TensorSource,
    unet: Patched<'a>,
    unet_base: &'a dyn TensorSource,
    tokenizer: &'a dyn CheckpointFiles,
}

impl PatchedParts<'_> {
    fn as_parts(&self) -> PackParts<'_> {
        PackParts {
            configs: self.configs.clone(),
            text_encoder: &self.text,
            vae: self.vae,
            unet: &self.unet,
            unet_base: self.unet_base,
            tokenizer: self.tokenizer,
        }
    }
}

impl Merged {
    fn new(loras: Vec<std::sync::Arc<Lora>>, configs: &Configs, device: &Device) -> Result<Self> {
        let options = LoadOptions {
            loras,
            ..Default::default()
        };
        Ok(Self {
            unet: unet_patches(&options, &configs.unet, device)?,
            text: text_encoder_patches(&options, &configs.clip, device)?,
        })
    }

    fn parts<'a>(
        &'a self,
        configs: &Configs,
        text: &'a dyn TensorSource,
        vae: &'a dyn TensorSource,
        unet: &'a dyn TensorSource,
        tokenizer: &'a dyn CheckpointFiles,
    ) -> Result<PatchedParts<'a>> {
        let json = |v: serde_json::Result<serde_json::Value>| {
            v.map_err(|e| TavError::InvalidInput(format!("config does not serialise: {e}")))
        };
        let configs: BTreeMap<String, serde_json::Value> = [
            ("text_encoder", json(serde_json::to_value(&configs.clip))?),
            ("vae", json(serde_json::to_value(&configs.vae))?),
            ("unet", json(serde_json::to_value(&configs.unet))?),
            ("scheduler", json(serde_json::to_value(&configs.scheduler))?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(PatchedParts {
            configs,
            text: Patched {
                base: text,
                patches: &self.text,
            },
            vae,
            unet: Patched {
                base: unet,
                patches: &self.unet,
            },
            unet_base: unet,
            tokenizer,
        })
    }
}

/// The arguments of `tav pack-web`.
#[derive(Args)]
pub struct PackWebCommand {
    /// The Stable Diffusion v1.x model: a diffusers folder or a single-file checkpoint.
    pub model: PathBuf,
    /// The output folder (serve it over HTTP; the web engine loads its manifest.json).
    pub out: PathBuf,
    /// Weights variant to read, e.g. `fp16`.
    #[arg(long)]
    pub variant: Option<String>,
    /// Largest shard in MiB (a larger single tensor gets a shard of its own).
    #[arg(long, default_value_t = 64)]
    pub shard_mib: u64,
    /// Temporal layer weights to ship with the UNet (safetensors keyed by module path);
    /// without it the browser initialises them as the reference does.
    #[arg(long)]
    pub temporal: Option<PathBuf>,
    /// A LoRA merged into the packed weights, `FILE[:SCALE]`; repeat for several.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<models::LoraSpec>,
    /// For a single-file checkpoint: a diffusers folder whose configs (and tokenizer) to
    /// use instead of inferring them.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
}

/// Runs `tav pack-web`.
pub fn command(args: PackWebCommand) -> Result<()> {
    let PackWebCommand {
        model,
        out,
        variant,
        shard_mib,
        temporal,
        loras,
        model_config,
    } = args;
    let manifest = pack::pack_web(&pack::PackSpec {
        model: &model,
        out: &out,
        variant: variant.as_deref(),
        shard_bytes: shard_mib.max(1) << 20,
        temporal: temporal.as_deref(),
        model_config: model_config.as_deref(),
        loras: &loras,
    })?;
    println!(
        "packed {} into {}: {} shards, {:.1} MB in f16",
        model.display(),
        out.display(),
        manifest.shards.len(),
        manifest.total_bytes() as f64 / 1e6
    );
    Ok(())
}

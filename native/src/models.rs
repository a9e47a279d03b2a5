//! Which model a command runs, as the user names it: the built-in demo model, a diffusers
//! folder, or a single-file checkpoint (original layout); with LoRAs merged in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;
use tav_core::checkpoint::{
    CheckpointFiles, Folder, LoadOptions, MemoryFiles, Models, load_tokenizer, read_configs,
    read_scheduler_config,
};
use tav_core::delta::LoraUse;
use tav_core::lora::Lora;
use tav_core::single_file::{self, Configs, SingleFile};
use tav_core::weights::SafetensorsFile;
use tav_core::{Result, TavError};

/// `--lora FILE[:SCALE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f64,
}

impl std::str::FromStr for LoraSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (path, scale) = tav_core::lora::parse_spec(s)?;
        Ok(Self {
            path: PathBuf::from(path),
            scale,
        })
    }
}

/// The model as named on the command line or in a job file.
#[derive(Debug, Clone, Default)]
pub struct ModelChoice {
    /// `demo`, a diffusers folder or a `.safetensors` single-file checkpoint.
    pub path: PathBuf,
    /// `--variant` (folders only).
    pub variant: Option<String>,
    /// `--model-config`: a diffusers folder whose configs (and tokenizer) a single file uses.
    pub model_config: Option<PathBuf>,
    pub loras: Vec<LoraSpec>,
}

/// The bundled CLIP tokenizer (SD v1.x's), for single files, which carry none.
pub fn bundled_tokenizer() -> MemoryFiles {
    let mut files = MemoryFiles {
        name: "tav's bundled CLIP tokenizer".into(),
        ..Default::default()
    };
    files.files.insert(
        "tokenizer/vocab.json".into(),
        include_bytes!("../../assets/clip-tokenizer/vocab.json").to_vec(),
    );
    files.files.insert(
        "tokenizer/merges.txt".into(),
        include_bytes!("../../assets/clip-tokenizer/merges.txt").to_vec(),
    );
    files
}

/// Reads each `--lora` file (safetensors only; pickles are refused unread).
pub fn read_loras(specs: &[LoraSpec]) -> Result<Vec<Arc<Lora>>> {
    specs
        .iter()
        .map(|spec| {
            let shown = spec.path.display().to_string();
            single_file::refuse_pickle(&shown)?;
            let file = SafetensorsFile::open(&spec.path)?;
            Ok(Arc::new(Lora::read(&file, spec.scale)?))
        })
        .collect()
}

/// What tuned weights record of the LoRAs a model was loaded with.
pub fn lora_uses(loras: &[Arc<Lora>]) -> Vec<LoraUse> {
    loras
        .iter()
        .map(|l| LoraUse {
            file: Path::new(&l.path)
                .file_name()
                .map_or(l.path.clone(), |n| n.to_string_lossy().into_owned()),
            fingerprint: l.fingerprint.clone(),
            scale: l.scale,
        })
        .collect()
}

/// A single-file checkpoint opened and mapped, with the configs and tokenizer it runs with.
pub struct OpenedSingleFile {
    pub single: SingleFile,
    pub configs: Configs,
    pub tokenizer_files: Box<dyn CheckpointFiles>,
    /// Where the configs came from, for the user.
    pub configs_note: String,
}

/// Opens `path` as a single-file checkpoint: refused if a pickle or not SD v1.x; configs from
/// `model_config` or inferred from shapes.
pub fn open_single_file(
    path: &Path,
    model_config: Option<&Path>,
    device: &Device,
) -> Result<OpenedSingleFile> {
    let shown = path.display().to_string();
    single_file::refuse_pickle(&shown)?;
    if !shown.to_lowercase().ends_with(".safetensors") {
        return Err(TavError::InvalidInput(format!(
            "{shown} is neither a diffusers folder nor a .safetensors checkpoint"
        )));
    }
    let file = SafetensorsFile::open(path)?;
    let shapes = file.shapes();
    single_file::identify(&shapes, &shown)?;
    let (configs, tokenizer_files, configs_note): (Configs, Box<dyn CheckpointFiles>, String) =
        match model_config {
            Some(dir) => {
                let folder = Folder(dir.to_path_buf());
                let (unet, vae, clip) = read_configs(&folder)?;
                let scheduler = read_scheduler_config(&folder)?;
                let configs = Configs {
                    unet,
                    vae,
                    clip,
                    scheduler,
                };
                let tokenizer: Box<dyn CheckpointFiles> = if dir.join("tokenizer").is_dir() {
                    Box::new(folder)
                } else {
                    Box::new(bundled_tokenizer())
                };
                (
                    configs,
                    tokenizer,
                    format!("configs from {}", dir.display()),
                )
            }
            None => (
                single_file::infer_configs(&shapes, &shown)?,
                Box::new(bundled_tokenizer()),
                "configs inferred from the tensors' shapes, with SD v1.x's head counts; \
                 SD v1.x's scheduler (scaled-linear betas 0.00085–0.012, 1000 steps) and tav's \
                 bundled CLIP tokenizer"
                    .to_string(),
            ),
        };
    let single = SingleFile::new(file, &configs, device)?;
    Ok(OpenedSingleFile {
        single,
        configs,
        tokenizer_files,
        configs_note,
    })
}

/// Loads the chosen model with `options` (its LoRAs already read); `say` hears what a user
/// should know (where configs came from, unused tensors).
pub fn load(
    choice: &ModelChoice,
    options: &LoadOptions,
    device: &Device,
    say: &mut dyn FnMut(&str),
) -> Result<Models> {
    let path = &choice.path;
    if path.is_dir() {
        if choice.model_config.is_some() {
            say(
                "note: --model-config is for single-file checkpoints; the folder's own configs are used",
            );
        }
        return Models::load(&Folder(path.clone()), None, options, device);
    }
    if !path.exists() {
        return Err(TavError::MissingFile {
            path: path.display().to_string(),
            what: "the model: a diffusers folder or a .safetensors checkpoint".into(),
        });
    }
    let opened = open_single_file(path, choice.model_config.as_deref(), device)?;
    say(&format!(
        "single-file checkpoint {}: {}",
        path.display(),
        opened.configs_note
    ));
    let tokenizer = load_tokenizer(
        opened.tokenizer_files.as_ref(),
        opened.configs.clip.max_position_embeddings,
    )?;
    let models = Models::load_single_file(
        &opened.single,
        &opened.configs,
        tokenizer,
        None,
        options,
        device,
    )?;
    for note in &models.notes {
        say(note);
    }
    for key in &models.unmapped {
        say(&format!(
            "warning: {} has a tensor that maps to no layer of SD v1.x: `{key}` (not used)",
            path.display()
        ));
    }
    Ok(models)
}

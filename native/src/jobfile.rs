//! Job files (`tav run JOB.toml`), like the reference's configs: which model, which clip and
//! prompt, how to tune, what to edit into. Relative paths are relative to the job file's
//! folder; `demo` names the built-in model or clip. Command-line flags override the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tav_core::delta::TuneMeta;
use tav_core::edit::Guidance;
use tav_core::{Result, TavError};

use crate::cli::{ClipArgs, Common, EditArgs, TuneArgs};
use crate::job::{ClipSpec, EditSpec, TuneSpec};
use crate::models::LoraSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    model: Option<String>,
    /// A diffusers folder whose configs a single-file `model` uses.
    model_config: Option<String>,
    /// LoRAs merged into the model: `lora = [{ path = "style.safetensors", scale = 0.8 }]`.
    #[serde(default)]
    lora: Vec<LoraEntry>,
    output: Option<String>,
    clip: ClipSection,
    #[serde(default)]
    tune: TuneSection,
    #[serde(default)]
    edit: EditSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraEntry {
    path: String,
    #[serde(default = "full_scale")]
    scale: f64,
}

fn full_scale() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClipSection {
    video: String,
    prompt: String,
    frames: Option<usize>,
    start: Option<usize>,
    stride: Option<usize>,
    width: Option<usize>,
    height: Option<usize>,
    crop: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TuneSection {
    steps: Option<usize>,
    learning_rate: Option<f64>,
    seed: Option<u64>,
    checkpoint_every: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditSection {
    #[serde(default)]
    prompts: Vec<String>,
    inversion_steps: Option<usize>,
    inference_steps: Option<usize>,
    guidance: Option<f64>,
    guidance_rescale: Option<f64>,
    png: Option<bool>,
}

/// Everything a run needs, defaults filled in.
#[derive(Debug, Clone)]
pub struct Job {
    pub model: PathBuf,
    pub model_config: Option<PathBuf>,
    pub loras: Vec<LoraSpec>,
    pub out: PathBuf,
    pub clip: ClipSpec,
    pub tune: TuneSpec,
    pub edit: EditSpec,
}

fn resolve(base: &Path, value: &str) -> PathBuf {
    if value == "demo" || Path::new(value).is_absolute() {
        PathBuf::from(value)
    } else {
        normalize(&base.join(value))
    }
}

/// `jobs/../outputs/x` → `outputs/x`, lexically (the path need not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

fn default_out(name: &str) -> PathBuf {
    PathBuf::from("outputs").join(name)
}

impl Job {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TavError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let file: File = toml::from_str(&text).map_err(|e| TavError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_stem()
            .map_or("job".into(), |s| s.to_string_lossy().into_owned());
        let c = file.clip;
        Ok(Self {
            model: resolve(base, file.model.as_deref().unwrap_or("demo")),
            model_config: file.model_config.as_deref().map(|c| resolve(base, c)),
            loras: file
                .lora
                .iter()
                .map(|l| LoraSpec {
                    path: resolve(base, &l.path),
                    scale: l.scale,
                })
                .collect(),
            out: file
                .output
                .map_or_else(|| default_out(&name), |o| resolve(base, &o)),
            clip: ClipSpec {
                video: resolve(base, &c.video),
                start: c.start.unwrap_or(0),
                stride: c.stride.unwrap_or(2),
                frames: c.frames.unwrap_or(24),
                width: c.width.unwrap_or(512),
                height: c.height.unwrap_or(512),
                crop: c.crop.unwrap_or(true),
            },
            tune: {
                let d = TuneSpec::reference(c.prompt);
                TuneSpec {
                    steps: file.tune.steps.unwrap_or(d.steps),
                    learning_rate: file.tune.learning_rate.unwrap_or(d.learning_rate),
                    seed: file.tune.seed.unwrap_or(d.seed),
                    checkpoint_every: file.tune.checkpoint_every.unwrap_or(d.checkpoint_every),
                    ..d
                }
            },
            edit: {
                let d = EditSpec::reference(file.edit.prompts);
                EditSpec {
                    inversion_steps: file.edit.inversion_steps.unwrap_or(d.inversion_steps),
                    steps: file.edit.inference_steps.unwrap_or(d.steps),
                    guidance: Guidance {
                        scale: file.edit.guidance.unwrap_or(d.guidance.scale),
                        rescale: file.edit.guidance_rescale.unwrap_or(d.guidance.rescale),
                    },
                    png: file.edit.png.unwrap_or(d.png),
                    ..d
                }
            },
        })
    }

    /// Flags given on the command line win over the file.
    pub fn with_overrides(
        mut self,
        common: &Common,
        clip: &ClipArgs,
        tune: &TuneArgs,
        edit: &EditArgs,
    ) -> Self {
        if common.model.as_os_str() != "demo" {
            self.model = common.model.clone();
        }
        if common.model_config.is_some() {
            self.model_config = common.model_config.clone();
        }
        // `--lora` flags replace the file's list.
        if !common.loras.is_empty() {
            self.loras = common.loras.clone();
        }
        if let Some(out) = &common.out {
            self.out = out.clone();
        }
        apply_clip(&mut self.clip, clip);
        apply_tune(&mut self.tune, tune);
        apply_edit(&mut self.edit, edit);
        self
    }

    /// `tav tune`: flags only.
    pub fn from_flags(
        common: &Common,
        clip: &ClipArgs,
        tune: &TuneArgs,
        prompt: String,
    ) -> Result<Self> {
        let video = clip
            .video
            .clone()
            .ok_or_else(|| TavError::InvalidInput("--video is required".into()))?;
        let name = video
            .file_stem()
            .map_or("clip".into(), |s| s.to_string_lossy().into_owned());
        let mut job = Self {
            model: common.model.clone(),
            model_config: common.model_config.clone(),
            loras: common.loras.clone(),
            out: common.out.clone().unwrap_or_else(|| default_out(&name)),
            clip: ClipSpec {
                video,
                start: 0,
                stride: 2,
                frames: 24,
                width: 512,
                height: 512,
                crop: true,
            },
            tune: TuneSpec::reference(prompt),
            edit: EditSpec::reference(Vec::new()),
        };
        apply_clip(&mut job.clip, clip);
        apply_tune(&mut job.tune, tune);
        Ok(job)
    }

    /// `tav edit`: the clip defaults to the one the weights were tuned on.
    pub fn for_edit(
        common: &Common,
        clip: &ClipArgs,
        edit: &EditArgs,
        meta: &TuneMeta,
        prompts: Vec<String>,
        tuned: &Path,
    ) -> Result<Self> {
        let out = common.out.clone().unwrap_or_else(|| {
            tuned
                .parent()
                .map_or_else(|| PathBuf::from("."), |p| p.join("edits"))
        });
        let mut job = Self {
            model: common.model.clone(),
            model_config: common.model_config.clone(),
            loras: common.loras.clone(),
            out,
            clip: ClipSpec {
                video: PathBuf::from(&meta.video),
                start: meta.start,
                stride: meta.stride,
                frames: meta.frames,
                width: meta.width,
                height: meta.height,
                crop: true,
            },
            tune: TuneSpec {
                prompt: meta.prompt.clone(),
                steps: meta.steps,
                learning_rate: meta.learning_rate,
                seed: meta.seed,
                checkpoint_every: 0,
                restart: false,
            },
            edit: EditSpec::reference(prompts),
        };
        apply_clip(&mut job.clip, clip);
        apply_edit(&mut job.edit, edit);
        Ok(job)
    }
}

fn apply_clip(spec: &mut ClipSpec, a: &ClipArgs) {
    if let Some(v) = &a.video {
        spec.video = v.clone();
    }
    spec.frames = a.frames.unwrap_or(spec.frames);
    spec.start = a.start.unwrap_or(spec.start);
    spec.stride = a.stride.unwrap_or(spec.stride);
    spec.width = a.width.unwrap_or(spec.width);
    spec.height = a.height.unwrap_or(spec.height);
    if a.no_crop {
        spec.crop = false;
    }
}

fn apply_tune(spec: &mut TuneSpec, a: &TuneArgs) {
    spec.steps = a.steps.unwrap_or(spec.steps);
    spec.learning_rate = a.lr.unwrap_or(spec.learning_rate);
    spec.seed = a.seed.unwrap_or(spec.seed);
    spec.checkpoint_every = a.checkpoint_every.unwrap_or(spec.checkpoint_every);
    spec.restart |= a.restart;
}

fn apply_edit(spec: &mut EditSpec, a: &EditArgs) {
    spec.inversion_steps = a.inversion_steps.unwrap_or(spec.inversion_steps);
    spec.steps = a.inference_steps.unwrap_or(spec.steps);
    spec.guidance.scale = a.guidance.unwrap_or(spec.guidance.scale);
    spec.guidance.rescale = a.guidance_rescale.unwrap_or(spec.guidance.rescale);
    spec.png |= a.png;
}

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
    /// `--window`: invert and edit in windows of this many frames.
    window: Option<usize>,
    /// `--window-overlap`.
    window_overlap: Option<usize>,
}

/// Everything a run needs, defaults filled in.
#[derive(Debug, Clone)]
pub struct Job {
    /// How the user named each setting (for messages): the flag, or the job-file key.
    pub names: Names,
    pub model: PathBuf,
    pub model_config: Option<PathBuf>,
    pub loras: Vec<LoraSpec>,
    pub out: PathBuf,
    pub clip: ClipSpec,
    pub tune: TuneSpec,
    pub edit: EditSpec,
}

/// How each setting was given, by its flag's name (`lr`, `guidance`, …): the flag itself, or
/// the job file's key, section and file. Unlisted settings are named by their flag.
#[derive(Debug, Clone, Default)]
pub struct Names {
    given: std::collections::BTreeMap<&'static str, String>,
}

impl Names {
    /// The setting `flag` as the user wrote it.
    pub fn of(&self, flag: &'static str) -> String {
        self.given
            .get(flag)
            .cloned()
            .unwrap_or_else(|| format!("--{flag}"))
    }

    fn file_key(&mut self, flag: &'static str, present: bool, key: &str, file: &Path) {
        if present {
            self.given
                .insert(flag, format!("`{key}` in {}", file.display()));
        }
    }

    fn flag(&mut self, flag: &'static str, present: bool) {
        if present {
            self.given.insert(flag, format!("--{flag}"));
        }
    }
}

/// The largest sizes tav accepts: far beyond any GPU today, small enough that no product of
/// sizes overflows.
pub const MAX_SIDE: usize = 8192;
pub const MAX_FRAMES: usize = 4096;
pub const MAX_STEPS: usize = 1_000_000;
/// DDIM steps are a subset of the 1000 training timesteps.
pub const MAX_DDIM_STEPS: usize = 1000;
pub const MAX_GUIDANCE: f64 = 100.0;

fn invalid(reason: String) -> TavError {
    TavError::InvalidInput(reason)
}

/// Frames of a clip.
pub fn check_frames(v: usize) -> std::result::Result<(), String> {
    if v == 0 || v > MAX_FRAMES {
        return Err(format!("{v} is out of range: 1 to {MAX_FRAMES} frames"));
    }
    Ok(())
}

/// A width, height or size in pixels.
pub fn check_side(v: usize) -> std::result::Result<(), String> {
    if v == 0 || !v.is_multiple_of(64) || v > MAX_SIDE {
        return Err(format!(
            "{v} is not a positive multiple of 64 up to {MAX_SIDE} (try {})",
            (v.clamp(64, MAX_SIDE) / 64) * 64
        ));
    }
    Ok(())
}

/// Tuning steps.
pub fn check_steps(v: usize) -> std::result::Result<(), String> {
    if v == 0 || v > MAX_STEPS {
        return Err(format!(
            "{v} is out of range: 1 to {MAX_STEPS} steps (the reference tunes 500)"
        ));
    }
    Ok(())
}

/// DDIM inversion or sampling steps.
pub fn check_ddim_steps(v: usize) -> std::result::Result<(), String> {
    if v == 0 || v > MAX_DDIM_STEPS {
        return Err(format!(
            "{v} is out of range: 1 to {MAX_DDIM_STEPS} DDIM steps (the reference: 50)"
        ));
    }
    Ok(())
}

/// A learning rate. No upper bound: a rate that diverges is caught as tuning runs, at the
/// step it diverges.
pub fn check_learning_rate(v: f64) -> std::result::Result<(), String> {
    if !v.is_finite() || v <= 0.0 {
        return Err(format!(
            "{v} must be a finite number above 0 (the reference: 3e-5)"
        ));
    }
    Ok(())
}

/// A classifier-free guidance scale.
pub fn check_guidance(v: f64) -> std::result::Result<(), String> {
    if !v.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&v) {
        return Err(format!(
            "{v} is out of range: 0 to {MAX_GUIDANCE} (the reference: 12.5)"
        ));
    }
    Ok(())
}

/// How far guidance is rescaled.
pub fn check_rescale(v: f64) -> std::result::Result<(), String> {
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(format!(
            "{v} is out of range: 0 to 1 (0 is the reference; 0.5-0.7 tames strong guidance)"
        ));
    }
    Ok(())
}

/// A video's frames and size as the flags name them, for the subcommands that take them
/// directly (`plan`, `check`, `bench`): the same bounds as their parsers and job files.
pub fn check_video(frames: usize, width: usize, height: usize) -> Result<()> {
    let named = |flag: &str, check: std::result::Result<(), String>| {
        check.map_err(|reason| invalid(format!("--{flag}: {reason}")))
    };
    named("frames", check_frames(frames))?;
    named("width", check_side(width))?;
    named("height", check_side(height))
}

impl Job {
    /// Checks every setting of the job before any work starts (nothing loaded, nothing
    /// written): finite numbers in sensible ranges, sizes and frame counts whose arithmetic
    /// cannot overflow, at least one prompt to edit into (`edit`), LoRA strengths, the clip
    /// present. Messages name each setting as the user wrote it (flag or job-file key).
    pub fn validate(&self, tune: bool, edit: bool) -> Result<()> {
        let n = &self.names;
        let c = &self.clip;
        let named = |flag: &'static str, check: std::result::Result<(), String>| {
            check.map_err(|reason| invalid(format!("{}: {reason}", n.of(flag))))
        };
        if c.video.as_os_str() != "demo" && !c.video.exists() {
            return Err(TavError::MissingFile {
                path: c.video.display().to_string(),
                what: "the input clip (--video): an .mp4, a .gif or a folder of frames".into(),
            });
        }
        named("width", check_side(c.width))?;
        named("height", check_side(c.height))?;
        if c.frames != crate::video::Sampling::ALL {
            named("frames", check_frames(c.frames))?;
        }
        if c.stride == 0 {
            return Err(invalid(format!(
                "{}: 0 is out of range (at least 1)",
                n.of("stride")
            )));
        }
        if c.last_frame().is_none() {
            return Err(invalid(format!(
                "{} {} with {} {} and {} {} reaches past any video's length",
                n.of("start"),
                c.start,
                n.of("stride"),
                c.stride,
                n.of("frames"),
                c.frames
            )));
        }
        for (i, lora) in self.loras.iter().enumerate() {
            tav_core::lora::check_scale(lora.scale).map_err(|reason| {
                invalid(format!(
                    "{}: {reason}",
                    n.given
                        .get("lora")
                        .map(|file| format!("`lora[{i}].scale` ({}) {file}", lora.path.display()))
                        .unwrap_or_else(|| format!("--lora {}", lora.path.display()))
                ))
            })?;
        }
        if tune {
            named("steps", check_steps(self.tune.steps))?;
            named("lr", check_learning_rate(self.tune.learning_rate))?;
        }
        if edit {
            let e = &self.edit;
            if e.prompts.is_empty() {
                return Err(invalid(format!(
                    "no edit prompts: give at least one ({})",
                    n.of("prompt")
                )));
            }
            named("inversion-steps", check_ddim_steps(e.inversion_steps))?;
            named("inference-steps", check_ddim_steps(e.steps))?;
            named("guidance", check_guidance(e.guidance.scale))?;
            named("guidance-rescale", check_rescale(e.guidance.rescale))?;
            if let Some(window) = e.window {
                named("window", window.check())?;
            }
        }
        Ok(())
    }
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
        Self::from_text(&text, path)
    }

    /// A job file's text; `path` is where it is (relative paths resolve from its folder).
    pub fn from_text(text: &str, path: &Path) -> Result<Self> {
        let file: File = toml::from_str(text).map_err(|e| TavError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if file.edit.window_overlap.is_some() && file.edit.window.is_none() {
            return Err(TavError::Config {
                path: path.display().to_string(),
                reason: "[edit] window_overlap without [edit] window: give the window's size too"
                    .into(),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_stem()
            .map_or("job".into(), |s| s.to_string_lossy().into_owned());
        let c = file.clip;
        let mut names = Names::default();
        for (flag, present, key) in [
            ("frames", c.frames.is_some(), "[clip] frames"),
            ("start", c.start.is_some(), "[clip] start"),
            ("stride", c.stride.is_some(), "[clip] stride"),
            ("width", c.width.is_some(), "[clip] width"),
            ("height", c.height.is_some(), "[clip] height"),
            ("steps", file.tune.steps.is_some(), "[tune] steps"),
            (
                "lr",
                file.tune.learning_rate.is_some(),
                "[tune] learning_rate",
            ),
            ("prompt", true, "[edit] prompts"),
            (
                "inversion-steps",
                file.edit.inversion_steps.is_some(),
                "[edit] inversion_steps",
            ),
            (
                "inference-steps",
                file.edit.inference_steps.is_some(),
                "[edit] inference_steps",
            ),
            ("guidance", file.edit.guidance.is_some(), "[edit] guidance"),
            (
                "guidance-rescale",
                file.edit.guidance_rescale.is_some(),
                "[edit] guidance_rescale",
            ),
            ("window", file.edit.window.is_some(), "[edit] window"),
        ] {
            names.file_key(flag, present, key, path);
        }
        if !file.lora.is_empty() {
            names.given.insert("lora", format!("in {}", path.display()));
        }
        Ok(Self {
            names,
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
                    window: file
                        .edit
                        .window
                        .map(|size| tav_core::window::Window::new(size, file.edit.window_overlap)),
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
            self.names.given.remove("lora");
        }
        if let Some(out) = &common.out {
            self.out = out.clone();
        }
        apply_clip(&mut self.clip, clip);
        apply_tune(&mut self.tune, tune);
        apply_edit(&mut self.edit, edit);
        self.names.flags_given(clip, Some(tune), Some(edit));
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
            names: Names::default(),
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
        job.names.flags_given(clip, Some(tune), None);
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
        let mut names = Names::default();
        let shown = tuned.display();
        for (flag, key) in [
            ("frames", "frames"),
            ("start", "start"),
            ("stride", "stride"),
            ("width", "width"),
            ("height", "height"),
        ] {
            names
                .given
                .insert(flag, format!("`{key}` in the metadata of {shown}"));
        }
        let mut job = Self {
            names,
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
        job.names.flags_given(clip, None, Some(edit));
        Ok(job)
    }
}

impl Names {
    /// The flags given on the command line name their settings.
    fn flags_given(&mut self, c: &ClipArgs, t: Option<&TuneArgs>, e: Option<&EditArgs>) {
        self.flag("frames", c.frames.is_some());
        self.flag("start", c.start.is_some());
        self.flag("stride", c.stride.is_some());
        self.flag("width", c.width.is_some());
        self.flag("height", c.height.is_some());
        if let Some(t) = t {
            self.flag("steps", t.steps.is_some());
            self.flag("lr", t.lr.is_some());
        }
        if let Some(e) = e {
            self.flag("inversion-steps", e.inversion_steps.is_some());
            self.flag("inference-steps", e.inference_steps.is_some());
            self.flag("guidance", e.guidance.is_some());
            self.flag("guidance-rescale", e.guidance_rescale.is_some());
        }
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
    if let Some(size) = a.window {
        spec.window = Some(tav_core::window::Window::new(size, a.window_overlap));
    }
}

//! `tav score`: one-shot edits of held-out toy-world clips, scored from their pixels, for the
//! full method and the paper's ablations with the same seeds. Each clip is edited three
//! ways (its colour, its background, its shape); every edit is scored for the attribute
//! asked for, the motion kept (mask IoU and centroid path against the source),
//! frame-to-frame change and the object's colour drift across frames.

use super::prelude::*;

use std::path::{Path, PathBuf};

use tav_core::edit::Guidance;
use tav_core::progress::{Event, Phase};
use tav_core::score::{Analysis, analyse, background_change, motion_kept};
use tav_core::toyworld::{Background, ClipSpec, Colour, Shape, caption, render};
use tav_core::transformer::{SelfAttentionKind, VideoAttentionOptions};
use tav_core::tune::{Flow, TuneBatch, TuneSettings, Tuner, TuningRun, clip_latents, seeded};
use tav_core::unet::UNet3D;
use tav_core::{Result, TavError};

use crate::commands::sample::SampleSpec;
use crate::job::{EditSpec, Session, edited_clips, video_error, write_atomic};
use crate::ui::Ui;
use crate::video::{self, Clip};

/// The method and its ablations (`--methods`; the names are [`Method::name`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Tune-A-Video: tuned, sparse-causal and temporal attention.
    Full,
    /// Inversion and editing with the inflated but untuned model.
    NoTuning,
    /// Tuned, without the temporal layers.
    NoTemporal,
    /// Tuned, with each frame attending only to itself instead of sparse-causal attention.
    #[value(name = "per-frame-attention")]
    FullSelfAttention,
    /// Not an edit: the base model samples each edit prompt from seeded noise, with no
    /// source clip. Its attribute success is what the model itself draws for a prompt, the
    /// bound an edit works within; its motion scores show what inversion adds.
    TextToVideo,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::NoTuning => "no-tuning",
            Method::NoTemporal => "no-temporal",
            Method::FullSelfAttention => "per-frame-attention",
            Method::TextToVideo => "text-to-video",
        }
    }

    fn attention(self, base: VideoAttentionOptions) -> VideoAttentionOptions {
        match self {
            Method::Full | Method::NoTuning | Method::TextToVideo => base,
            Method::NoTemporal => VideoAttentionOptions {
                temporal: false,
                ..base
            },
            Method::FullSelfAttention => VideoAttentionOptions {
                self_attention: SelfAttentionKind::PerFrame,
                ..base
            },
        }
    }
}

/// What to score.
#[derive(Debug, Clone)]
pub struct ScoreSpec {
    /// Held-out clips, drawn from `seed`, `seed + 1`, …
    pub clips: usize,
    pub seed: u64,
    pub frames: usize,
    pub size: usize,
    /// Camera pan of every clip (see [`ClipSpec::pan`]).
    pub pan: f32,
    pub tune_steps: usize,
    pub learning_rate: f64,
    pub inversion_steps: usize,
    pub steps: usize,
    pub guidance: Guidance,
    pub methods: Vec<Method>,
    /// Where to write `score.json` and `videos/` (each clip beside its edits, per method).
    pub out: Option<PathBuf>,
    /// Edit this many frames of each clip (tuned on `frames` of them, evenly spaced over
    /// the clip, as the reference tunes on 24 frames of a longer video) [default: `frames`].
    pub edit_frames: Option<usize>,
    /// Invert and edit window by window (`--window`).
    pub window: Option<tav_core::window::Window>,
}

/// Which attribute an edit changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Colour(Colour),
    Background(Background),
    Shape(Shape),
}

impl Change {
    fn kind(self) -> &'static str {
        match self {
            Change::Colour(_) => "colour",
            Change::Background(_) => "background",
            Change::Shape(_) => "shape",
        }
    }

    fn prompt(self, spec: &ClipSpec) -> String {
        match self {
            Change::Colour(c) => caption(c, spec.shape, spec.background),
            Change::Background(b) => caption(spec.colour, spec.shape, b),
            Change::Shape(s) => caption(spec.colour, s, spec.background),
        }
    }

    fn achieved(self, seen: &Analysis) -> bool {
        match self {
            Change::Colour(c) => seen.colour == Some(c),
            Change::Background(b) => seen.background == b,
            Change::Shape(s) => seen.shape == Some(s),
        }
    }
}

/// The three edits of a clip: the next colour, background and shape in the world's order,
/// so every edit asks for something the clip does not show.
fn changes(spec: &ClipSpec) -> [Change; 3] {
    fn next<T: PartialEq + Copy>(all: &[T], current: T) -> T {
        let i = all.iter().position(|&x| x == current).unwrap_or(0);
        all[(i + 1) % all.len()]
    }
    [
        Change::Colour(next(&Colour::ALL, spec.colour)),
        Change::Background(next(&Background::ALL, spec.background)),
        Change::Shape(next(&Shape::ALL, spec.shape)),
    ]
}

/// One scored edit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EditScore {
    pub method: &'static str,
    pub clip_seed: u64,
    pub source: String,
    pub kind: &'static str,
    pub prompt: String,
    pub attribute_ok: bool,
    /// What the edit shows, read from its pixels (`none` where no object is seen).
    pub seen: String,
    pub mean_iou: f32,
    pub centroid_error: f32,
    pub frame_change: f32,
    pub source_frame_change: f32,
    /// The object's colour drift from the first frame it is seen in (near 0 for a generated
    /// clip).
    pub colour_drift: f32,
    /// The background's frame-to-frame change once the camera's pan is undone (see
    /// `tav_core::score::background_change`): what a still or panned background should keep
    /// low, and per-frame generation does not.
    pub background_change: f32,
    pub source_background_change: f32,
    /// With windows: the mean change between consecutive frames where windows join (the
    /// pairs in or at the edge of an overlap) and inside one window; the object's colour
    /// drift within each window, averaged. Measured at the same frames without windows too,
    /// for comparison.
    pub join_frame_change: Option<f32>,
    pub inside_frame_change: Option<f32>,
    pub window_colour_drift: Option<f32>,
}

impl ScoreSpec {
    /// Checks the settings before any model is loaded.
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 || !self.size.is_multiple_of(64) {
            return Err(TavError::InvalidInput(format!(
                "--size {} is not a positive multiple of 64",
                self.size
            )));
        }
        crate::commands::toy::check_pan(self.pan)?;
        if let Some(window) = self.window {
            window
                .check()
                .map_err(|e| TavError::InvalidInput(format!("--window: {e}")))?;
        }
        if self.edit_frames.is_some_and(|f| f < self.frames) {
            return Err(TavError::InvalidInput(format!(
                "--edit-frames {} is fewer than the {} tuned on (--frames)",
                self.edit_frames.unwrap_or(0),
                self.frames
            )));
        }
        if self.clips == 0 || self.frames == 0 || self.methods.is_empty() {
            return Err(TavError::InvalidInput(
                "--clips, --frames and --methods must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// Runs every method on every clip and returns the scores, edit by edit.
pub fn run(session: &Session, spec: &ScoreSpec, ui: &mut Ui) -> Result<Vec<EditScore>> {
    spec.validate()?;
    let edit_frames = spec.edit_frames.unwrap_or(spec.frames);
    let unet_frames = spec
        .window
        .map_or(edit_frames, |w| edit_frames.min(w.size + 1));
    session.check_fits(spec.frames.max(unet_frames), spec.size, spec.size)?;
    // Where windows would join, so whole-clip edits are measured at the same frames.
    let layout = tav_core::window::Window {
        size: spec.window.map_or(16, |w| w.size),
        overlap: spec.window.map_or(4, |w| w.overlap),
    };
    let joins = join_pairs(&layout, edit_frames);
    let mut scores = Vec::new();
    for c in 0..spec.clips {
        let clip_spec = ClipSpec {
            pan: spec.pan,
            ..ClipSpec::random(spec.seed + c as u64, edit_frames, spec.size)
        };
        let clip = crate::commands::toy::as_clip(render(&clip_spec));
        let source = analyse(&clip.frames, spec.size);
        let shift = clip_spec.pan_per_frame();
        let source_background_change =
            background_change(&clip.frames, &source.masks, spec.size, shift);
        ui.say(&format!(
            "clip {}/{}: {} ({})",
            c + 1,
            spec.clips,
            clip_spec.caption(),
            clip_spec.path.name()
        ));
        for &method in &spec.methods {
            let edits = edit_clip(session, spec, method, &clip_spec, &clip, ui)?;
            if let Some(out) = &spec.out {
                write_grid(out, &clip, &edits, clip_spec.seed, method, ui)?;
            }
            for (change, edited) in changes(&clip_spec).into_iter().zip(edits) {
                let seen = analyse(&edited.frames, spec.size);
                let kept = motion_kept(&source, &seen, spec.size);
                scores.push(EditScore {
                    method: method.name(),
                    clip_seed: clip_spec.seed,
                    source: clip_spec.caption(),
                    kind: change.kind(),
                    prompt: change.prompt(&clip_spec),
                    attribute_ok: change.achieved(&seen),
                    seen: described(&seen),
                    mean_iou: kept.mean_iou,
                    centroid_error: kept.centroid_error,
                    frame_change: seen.frame_change,
                    source_frame_change: source.frame_change,
                    colour_drift: seen.colour_drift,
                    background_change: background_change(
                        &edited.frames,
                        &seen.masks,
                        spec.size,
                        shift,
                    ),
                    source_background_change,
                    join_frame_change: (edit_frames > layout.size)
                        .then(|| pair_change(&edited.frames, joins.iter().copied())),
                    inside_frame_change: (edit_frames > layout.size).then(|| {
                        pair_change(
                            &edited.frames,
                            (0..edit_frames - 1).filter(|j| !joins.contains(j)),
                        )
                    }),
                    window_colour_drift: (edit_frames > layout.size).then(|| {
                        let ranges = layout.ranges(edit_frames);
                        ranges
                            .iter()
                            .map(|r| analyse(&edited.frames[r.clone()], spec.size).colour_drift)
                            .sum::<f32>()
                            / ranges.len() as f32
                    }),
                });
            }
        }
    }
    if let Some(out) = &spec.out {
        let json = serde_json::to_vec_pretty(&serde_json::json!({
            "settings": {
                "clips": spec.clips, "seed": spec.seed, "frames": spec.frames, "size": spec.size,
                "pan": spec.pan,
                "tune_steps": spec.tune_steps, "learning_rate": spec.learning_rate,
                "inversion_steps": spec.inversion_steps, "steps": spec.steps,
                "guidance": spec.guidance.scale,
                "guidance_rescale": spec.guidance.rescale,
                "edit_frames": edit_frames,
                "window": spec.window.map(|w| serde_json::json!({"size": w.size, "overlap": w.overlap})),
            },
            "summary": summary(&scores),
            "edits": scores,
        }))
        .map_err(|e| TavError::InvalidInput(format!("score JSON: {e}")))?;
        write_atomic(&out.join("score.json"), &json)?;
    }
    Ok(scores)
}

/// The consecutive-frame pairs `(j, j + 1)`, by `j`, in or at the edge of an overlap
/// between windows.
fn join_pairs(window: &tav_core::window::Window, frames: usize) -> Vec<usize> {
    let ranges = window.ranges(frames);
    let mut pairs = Vec::new();
    for pair in ranges.windows(2) {
        let (start, end) = (pair[1].start, pair[0].end);
        pairs.extend(start.saturating_sub(1)..end.min(frames - 1));
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// The mean change between frames `j` and `j + 1` over the given `j`s.
fn pair_change(frames: &[Vec<u8>], pairs: impl Iterator<Item = usize>) -> f32 {
    let changes: Vec<f32> = pairs
        .map(|j| tav_core::score::frame_change(&frames[j..j + 2]))
        .collect();
    changes.iter().sum::<f32>() / changes.len().max(1) as f32
}

/// Tunes (unless ablated), inverts and makes the clip's three edits with `method`.
fn edit_clip(
    session: &Session,
    spec: &ScoreSpec,
    method: Method,
    clip_spec: &ClipSpec,
    clip: &Clip,
    ui: &mut Ui,
) -> Result<Vec<Clip>> {
    let models = &session.models;
    let prompts = changes(clip_spec).map(|c| c.prompt(clip_spec)).to_vec();
    if method == Method::TextToVideo {
        let sampling = SampleSpec {
            prompts,
            frames: spec.edit_frames.unwrap_or(spec.frames),
            size: Some(spec.size),
            steps: spec.steps,
            guidance: spec.guidance,
            seed: clip_spec.seed,
            fps: clip.fps,
        };
        return crate::commands::sample::videos(session, &models.unet, &sampling, ui);
    }
    let options = method.attention(session.attention);
    let posterior = session.encode(clip, ui)?;
    let unet = if method == Method::NoTuning {
        models.unet.clone()
    } else {
        // Tuned on `frames` of the clip, evenly spaced over it.
        let stride = (clip.frames.len() / spec.frames).max(1);
        let tuning_clip = Clip {
            frames: clip
                .frames
                .iter()
                .step_by(stride)
                .take(spec.frames)
                .cloned()
                .collect(),
            ..clip.clone()
        };
        let tuning_posterior = if tuning_clip.frames.len() == clip.frames.len() {
            posterior.clone()
        } else {
            session.encode(&tuning_clip, ui)?
        };
        let batch = TuneBatch {
            posterior: tuning_posterior,
            context: session.embed(&clip_spec.caption())?,
            scaling_factor: models.vae.scaling_factor,
            attention: options,
        };
        tune(session, &batch, spec, ui)?
    };
    let latents = clip_latents(posterior.mean, models.vae.scaling_factor);
    let edit = EditSpec {
        prompts,
        inversion_steps: spec.inversion_steps,
        steps: spec.steps,
        guidance: spec.guidance,
        png: false,
        window: spec.window,
    };
    edited_clips(session, &unet, latents, clip.fps, &edit, options, ui)
}

/// What a video shows, as a caption would say it: "red circle on the beach".
fn described(seen: &Analysis) -> String {
    format!(
        "{} {} on the {}",
        seen.colour.map_or("none", Colour::name),
        seen.shape.map_or("none", Shape::name),
        seen.background.name()
    )
}

/// `out/videos/SEED-METHOD.gif`: the source clip beside its three edits, so every scored
/// edit can be looked at.
fn write_grid(
    out: &Path,
    clip: &Clip,
    edits: &[Clip],
    seed: u64,
    method: Method,
    ui: &mut Ui,
) -> Result<()> {
    let dir = out.join("videos");
    std::fs::create_dir_all(&dir)
        .map_err(|e| TavError::InvalidInput(format!("cannot create {}: {e}", dir.display())))?;
    let mut rows = vec![clip.clone()];
    rows.extend(edits.iter().cloned());
    let path = dir.join(format!("{seed}-{}.gif", method.name()));
    video::write_gif(&path, &video::grid(&rows)).map_err(video_error)?;
    ui.record(serde_json::json!({"event": "written", "file": path.display().to_string()}));
    Ok(())
}

/// `spec.tune_steps` steps of the method's tuning, from the clip's own seed.
fn tune(session: &Session, batch: &TuneBatch, spec: &ScoreSpec, ui: &mut Ui) -> Result<UNet3D> {
    let models = &session.models;
    let settings = TuneSettings {
        learning_rate: spec.learning_rate,
        ..TuneSettings::default()
    };
    let mut tuner = Tuner::new(&models.unet, settings);
    let draws = seeded(spec.seed, batch, &models.schedule, &session.device);
    let run = TuningRun {
        batch,
        schedule: &models.schedule,
        steps: spec.tune_steps,
        draws: &draws,
    };
    tuner.run(models.unet.clone(), &run, &mut |step| {
        ui.event(Event {
            phase: Phase::Tune,
            step: step.steps_done,
            total: step.total,
            loss: Some(step.outcome.loss),
        });
        Ok(Flow::Continue)
    })
}

/// Per method: edits, attribute success (all, and by kind), mean IoU, centroid error and
/// frame change.
pub fn summary(scores: &[EditScore]) -> Vec<serde_json::Value> {
    let mut methods: Vec<&str> = Vec::new();
    for s in scores {
        if !methods.contains(&s.method) {
            methods.push(s.method);
        }
    }
    methods
        .into_iter()
        .map(|m| {
            let rows: Vec<&EditScore> = scores.iter().filter(|s| s.method == m).collect();
            let mean = |f: &dyn Fn(&EditScore) -> f32| {
                rows.iter().map(|s| f(s)).sum::<f32>() / rows.len().max(1) as f32
            };
            let success = |kind: Option<&str>| {
                let picked: Vec<_> = rows
                    .iter()
                    .filter(|s| kind.is_none_or(|k| s.kind == k))
                    .collect();
                picked.iter().filter(|s| s.attribute_ok).count() as f32 / picked.len().max(1) as f32
            };
            serde_json::json!({
                "method": m,
                "edits": rows.len(),
                "attribute_success": success(None),
                "colour_success": success(Some("colour")),
                "background_success": success(Some("background")),
                "shape_success": success(Some("shape")),
                "mean_iou": mean(&|s| s.mean_iou),
                "centroid_error": mean(&|s| s.centroid_error),
                "frame_change": mean(&|s| s.frame_change),
                "source_frame_change": mean(&|s| s.source_frame_change),
                "colour_drift": mean(&|s| s.colour_drift),
                "background_change": mean(&|s| s.background_change),
                "source_background_change": mean(&|s| s.source_background_change),
            })
        })
        .collect()
}

/// The summary as a plain-text table.
pub fn table(summary: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<20} {:>5} {:>8} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>6} {:>9}\n",
        "method",
        "edits",
        "success",
        "colour",
        "backgr",
        "shape",
        "mask IoU",
        "centroid",
        "flicker",
        "drift",
        "bg change"
    );
    for row in summary {
        let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "{:<20} {:>5} {:>8.2} {:>7.2} {:>7.2} {:>7.2} {:>8.3} {:>9.3} {:>9.4} {:>6.3} {:>9.4}\n",
            row["method"].as_str().unwrap_or("?"),
            row["edits"],
            f("attribute_success"),
            f("colour_success"),
            f("background_success"),
            f("shape_success"),
            f("mean_iou"),
            f("centroid_error"),
            f("frame_change"),
            f("colour_drift"),
            f("background_change"),
        ));
    }
    out
}

/// The arguments of `tav score`.
#[derive(Args)]
pub struct ScoreCommand {
    #[command(flatten)]
    pub common: Common,
    /// Held-out clips (seeds `--seed`, `--seed`+1, …); three edits each.
    #[arg(value_parser = crate::cli::count, long, default_value_t = 8)]
    pub clips: usize,
    #[arg(long, default_value_t = 1000)]
    pub seed: u64,
    #[arg(value_parser = crate::cli::frames, long, default_value_t = 8)]
    pub frames: usize,
    /// Width and height in pixels (a multiple of 64).
    #[arg(value_parser = crate::cli::side, long, default_value_t = 64)]
    pub size: usize,
    /// Camera pan: the clips' backgrounds slide left by this share of the frame over the
    /// clip (0: a still camera), so frames differ in every pixel.
    #[arg(long, default_value_t = 0.0)]
    pub pan: f32,
    #[arg(value_parser = crate::cli::steps, long, default_value_t = 300)]
    pub tune_steps: usize,
    #[arg(value_parser = crate::cli::learning_rate, long, default_value_t = 3e-4)]
    pub learning_rate: f64,
    #[arg(value_parser = crate::cli::ddim_steps, long, default_value_t = 25)]
    pub inversion_steps: usize,
    #[arg(value_parser = crate::cli::ddim_steps, long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance (4 with a rescale of 0.7 scored best on an earlier toy
    /// model, stage 3: 0.58 against 0.42 at guidance 2 without rescale, same 24 edits).
    #[arg(value_parser = crate::cli::guidance, long, default_value_t = 4.0)]
    pub guidance: f64,
    /// Rescale of the guided prediction toward the conditional one's scale, 0–1.
    #[arg(value_parser = crate::cli::rescale, long, default_value_t = 0.7)]
    pub guidance_rescale: f64,
    /// Methods, comma-separated: full, no-tuning, no-temporal, per-frame-attention, and
    /// text-to-video (not an edit: the base model samples the edit prompts from noise,
    /// what the model draws for a prompt without a source clip).
    #[arg(
        long,
        value_enum,
        default_value = "full,no-tuning,no-temporal,per-frame-attention",
        value_delimiter = ','
    )]
    pub methods: Vec<score::Method>,
    /// Edit this many frames of each clip, tuned on --frames of them spread evenly over it
    /// [default: --frames].
    #[arg(value_parser = crate::cli::frames, long)]
    pub edit_frames: Option<usize>,
    /// Invert and edit in windows of this many frames (`tav edit --window`); scores then add
    /// the frame change where windows join and inside them, and the colour drift per window.
    #[arg(value_parser = crate::cli::frames, long)]
    pub window: Option<usize>,
    /// Frames neighbouring windows share [default: a quarter of --window, at least 1].
    #[arg(long, requires = "window")]
    pub window_overlap: Option<usize>,
}

/// Runs `tav score`.
pub fn command(args: ScoreCommand) -> Result<()> {
    let ScoreCommand {
        common,
        clips,
        seed,
        frames,
        size,
        pan,
        tune_steps,
        learning_rate,
        inversion_steps,
        steps,
        guidance,
        guidance_rescale,
        methods,
        edit_frames,
        window,
        window_overlap,
    } = args;
    let spec = score::ScoreSpec {
        clips,
        seed,
        frames,
        size,
        pan,
        tune_steps,
        learning_rate,
        inversion_steps,
        steps,
        guidance: Guidance {
            scale: guidance,
            rescale: guidance_rescale,
        },
        methods,
        out: common.out.clone(),
        edit_frames,
        window: window.map(|size| tav_core::window::Window::new(size, window_overlap)),
    };
    spec.validate()?;
    let mut ui = ui_for(&common);
    let session = open_session(&common, &mut ui)?;
    let scores = score::run(&session, &spec, &mut ui)?;
    print!("{}", score::table(&score::summary(&scores)));
    Ok(())
}

//! `tav batch`: many clips, each with its prompts, from one manifest, sharded over processes
//! (`--index I --count N`: this process runs every clip whose position is I mod N), so a
//! scheduler people already run (a Kubernetes Indexed Job, a Slurm array) spreads a batch
//! over machines (docs/scale-out.md).
//!
//! Each clip is tuned and inverted once and every prompt for it sampled from that inversion.
//! Outputs go to one folder per clip; a clip finished is marked with `done.json` (written last),
//! and a rerun skips it; a clip cut off mid-tuning resumes from its last checkpoint. One clip
//! failing is reported and the others still run.

use std::path::Path;

use super::prelude::*;
use crate::job::{Session, write_atomic};
use crate::ui::Ui;

/// The arguments of `tav batch`.
#[derive(Args)]
pub struct BatchCommand {
    /// The manifest (TOML): a job file's settings (model, output, [clip] sizes, [tune],
    /// [edit]) and one [[clips]] table per clip with `video`, `prompt`, `edits` and an
    /// optional `name` (its output folder; default: the video's file name).
    pub manifest: PathBuf,
    /// This process's shard: it runs the clips at positions index, index + count, …
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// How many shards the batch is split into.
    #[arg(value_parser = crate::cli::count, long, default_value_t = 1)]
    pub count: usize,
    #[command(flatten)]
    pub common: Common,
}

/// One clip of a manifest, as its job.
struct BatchClip {
    name: String,
    job: jobfile::Job,
    /// What makes its outputs what they are: a finished clip is skipped on a rerun only
    /// when this is unchanged.
    settings: String,
}

/// How a clip ended in this run.
enum Outcome {
    Done { seconds: f64, files: Vec<PathBuf> },
    Skipped,
    Failed(String),
}

/// Runs `tav batch`.
pub fn command(args: BatchCommand) -> Result<()> {
    let BatchCommand {
        manifest,
        index,
        count,
        common,
    } = args;
    if index >= count {
        return Err(TavError::InvalidInput(format!(
            "--index {index} is not below --count {count}: shards are numbered 0 to {}",
            count - 1
        )));
    }
    // Every clip of the manifest is checked before any work, in every shard: a broken
    // manifest is refused the same way everywhere.
    let (clips, out) = read_manifest(&manifest, &common)?;
    check_creatable(&out)?;
    let mine: Vec<(usize, &BatchClip)> = clips
        .iter()
        .enumerate()
        .filter(|(position, _)| position % count == index)
        .collect();
    let mut ui = ui_for(&common);
    ui.say(&format!(
        "batch {}: {} clips, shard {index} of {count} runs {}",
        manifest.display(),
        clips.len(),
        mine.len()
    ));
    let started = Instant::now();
    let mut session: Option<Session> = None;
    let mut results = Vec::new();
    for (done, (position, clip)) in mine.iter().enumerate() {
        let out_dir = &clip.job.out;
        let outcome = if finished(out_dir, &clip.settings) {
            Outcome::Skipped
        } else {
            run_clip(clip, &common, &mut session, &mut ui)
        };
        let line = match &outcome {
            Outcome::Done { seconds, files } => format!(
                "done in {seconds:.0} s, {} files in {}",
                files.len(),
                out_dir.display()
            ),
            Outcome::Skipped => format!("already done in {}: skipped", out_dir.display()),
            Outcome::Failed(e) => format!("FAILED: {e}"),
        };
        ui.finish();
        ui.say(&format!(
            "clip {}/{} `{}` (manifest position {position}): {line}",
            done + 1,
            mine.len(),
            clip.name
        ));
        results.push((*position, *clip, outcome));
    }
    let summary = summary(
        &manifest,
        index,
        count,
        &results,
        started.elapsed().as_secs_f64(),
    );
    std::fs::create_dir_all(&out).map_err(|e| TavError::Write {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let summary_path = out.join(format!("summary-{index}-of-{count}.json"));
    write_atomic(
        &summary_path,
        &serde_json::to_vec_pretty(&summary).expect("json"),
    )?;
    ui.record(summary.clone());
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, _, o)| matches!(o, Outcome::Failed(_)))
        .map(|(_, c, _)| c.name.as_str())
        .collect();
    ui.say(&format!(
        "shard {index} of {count}: {} done, {} skipped, {} failed in {:.0} s; {}",
        results
            .iter()
            .filter(|(_, _, o)| matches!(o, Outcome::Done { .. }))
            .count(),
        results
            .iter()
            .filter(|(_, _, o)| matches!(o, Outcome::Skipped))
            .count(),
        failed.len(),
        started.elapsed().as_secs_f64(),
        summary_path.display()
    ));
    if failed.is_empty() {
        Ok(())
    } else {
        Err(TavError::InvalidInput(format!(
            "{} of {} clips failed ({}); the others are done. See {}",
            failed.len(),
            results.len(),
            failed.join(", "),
            summary_path.display()
        )))
    }
}

/// The manifest's clips as jobs (every setting checked), and the batch's output folder.
fn read_manifest(path: &Path, common: &Common) -> Result<(Vec<BatchClip>, PathBuf)> {
    let config_error = |reason: String| TavError::Config {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| TavError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| config_error(e.to_string()))?;
    let entries = match table.remove("clips") {
        Some(toml::Value::Array(entries)) if !entries.is_empty() => entries,
        Some(toml::Value::Array(_)) | None => {
            return Err(config_error(
                "no [[clips]]: list each clip as a [[clips]] table with video, prompt and edits"
                    .into(),
            ));
        }
        Some(_) => {
            return Err(config_error(
                "`clips` must be an array of tables ([[clips]])".into(),
            ));
        }
    };
    // The batch's folder: the manifest's `output` (as a job file's), else outputs/<manifest>.
    let stem = path
        .file_stem()
        .map_or("batch".into(), |s| s.to_string_lossy().into_owned());
    let base_out = match (&common.out, table.get("output")) {
        (Some(out), _) => out.clone(),
        (None, Some(toml::Value::String(output))) if Path::new(output).is_absolute() => {
            PathBuf::from(output)
        }
        (None, Some(toml::Value::String(output))) => {
            path.parent().unwrap_or(Path::new(".")).join(output)
        }
        (None, Some(_)) => return Err(config_error("`output` must be a folder's path".into())),
        (None, None) => PathBuf::from("outputs").join(&stem),
    };
    let mut clips: Vec<BatchClip> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = |field: &str| format!("clips[{i}].{field}");
        let entry = entry
            .as_table()
            .ok_or_else(|| config_error(format!("clips[{i}] is not a table")))?;
        let string = |field: &str| -> Result<String> {
            match entry.get(field) {
                Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(_) => Err(config_error(format!(
                    "{} must be a non-empty string",
                    at(field)
                ))),
                None => Err(config_error(format!("{} is missing", at(field)))),
            }
        };
        for key in entry.keys() {
            if !["name", "video", "prompt", "edits"].contains(&key.as_str()) {
                return Err(config_error(format!(
                    "{}: unknown field (a clip has name, video, prompt and edits; shared settings go in [clip], [tune] and [edit])",
                    at(key)
                )));
            }
        }
        let video = string("video")?;
        let prompt = string("prompt")?;
        let edits: Vec<String> = match entry.get("edits") {
            Some(toml::Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| config_error(format!("{} must list strings", at("edits"))))?,
            Some(_) => {
                return Err(config_error(format!(
                    "{} must list at least one prompt",
                    at("edits")
                )));
            }
            None => return Err(config_error(format!("{} is missing", at("edits")))),
        };
        let name = match entry.get("name") {
            Some(_) => string("name")?,
            None => Path::new(&video)
                .file_stem()
                .map_or_else(|| format!("clip-{i}"), |s| s.to_string_lossy().into_owned()),
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            || name.starts_with('.')
        {
            return Err(config_error(format!(
                "{}: `{name}` names the clip's output folder: use letters, digits, '.', '_' and '-' (not first '.')",
                at("name")
            )));
        }
        if let Some(other) = clips.iter().position(|c| c.name == name) {
            return Err(config_error(format!(
                "{} and clips[{other}] both name their output folder `{name}`: give each clip its own name",
                at("name")
            )));
        }
        let mut job_table = table.clone();
        job_table.insert(
            "clip".into(),
            toml::Value::Table(clip_table(&table, &video, &prompt)),
        );
        let mut edit = job_table
            .get("edit")
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        if edit.contains_key("prompts") {
            return Err(config_error(
                "[edit] prompts: in a manifest each clip lists its own (clips[N].edits)".into(),
            ));
        }
        edit.insert(
            "prompts".into(),
            toml::Value::Array(edits.iter().cloned().map(toml::Value::String).collect()),
        );
        job_table.insert("edit".into(), toml::Value::Table(edit));
        job_table.remove("output");
        let mut job = jobfile::Job::from_text(&toml::to_string(&job_table).expect("toml"), path)
            .map_err(|e| config_error(format!("clips[{i}] (`{name}`): {e}")))?
            .with_overrides(
                common,
                &ClipArgs::default(),
                &TuneArgs::default(),
                &EditArgs::default(),
            );
        job.out = base_out.join(&name);
        job.validate(true, true)
            .map_err(|e| config_error(format!("clips[{i}] (`{name}`): {e}")))?;
        let settings = format!(
            "{:?} {:?} {:?} {:?} {:?} {}",
            job.model, job.loras, job.clip, job.tune, job.edit, common.f16
        );
        clips.push(BatchClip {
            name,
            job,
            settings,
        });
    }
    Ok((clips, base_out))
}

/// The manifest's shared [clip] table with this clip's video and training prompt.
fn clip_table(table: &toml::Table, video: &str, prompt: &str) -> toml::Table {
    let mut clip = table
        .get("clip")
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    clip.insert("video".into(), toml::Value::String(video.into()));
    clip.insert("prompt".into(), toml::Value::String(prompt.into()));
    clip
}

/// Whether the clip's folder holds a finished run of these settings.
fn finished(out: &Path, settings: &str) -> bool {
    std::fs::read(out.join("done.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|done| done["settings"] == settings)
}

/// Tunes, inverts and edits one clip in its folder (the model loaded once per shard);
/// `done.json` is written last.
fn run_clip(
    clip: &BatchClip,
    common: &Common,
    session: &mut Option<Session>,
    ui: &mut Ui,
) -> Outcome {
    let started = Instant::now();
    let mut attempt = || -> Result<Vec<PathBuf>> {
        if session.is_none() {
            let mut session_common = common.clone();
            session_common.model = clip.job.model.clone();
            session_common.model_config = clip.job.model_config.clone();
            session_common.loras = clip.job.loras.clone();
            *session = Some(open_session(&session_common, ui)?);
        }
        let session = session.as_mut().expect("opened above");
        let spec = &clip.job;
        let out = &spec.out;
        let (frames, height, width) = (spec.clip.frames, spec.clip.height, spec.clip.width);
        let unet_frames = spec.edit.unet_frames(frames);
        session.check_plan(unet_frames, height, width, &["inversion", "sampling"])?;
        // Last: it also decides whether tuning recomputes blocks.
        session.check_plan(frames, height, width, &["tuning"])?;
        session.check_fits(frames, height, width)?;
        let video = spec.clip.read()?;
        let mut clip_ui = ui_for(common);
        create_output_folder(out, &mut clip_ui)?;
        let posterior = session.encode(&video, &mut clip_ui)?;
        let unet = job::tune(
            session,
            &spec.clip,
            posterior.clone(),
            &spec.tune,
            out,
            &mut clip_ui,
        )?;
        let files = job::edit(
            session,
            &unet,
            &video,
            posterior,
            &spec.edit,
            out,
            &mut clip_ui,
        )?;
        clip_ui.finish();
        let done = serde_json::json!({
            "clip": clip.name, "settings": clip.settings,
            "seconds": started.elapsed().as_secs_f64(),
            "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        });
        write_atomic(
            &out.join("done.json"),
            &serde_json::to_vec_pretty(&done).expect("json"),
        )?;
        Ok(files)
    };
    match attempt() {
        Ok(files) => Outcome::Done {
            seconds: started.elapsed().as_secs_f64(),
            files,
        },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The shard's report: every clip it ran, how each ended, and where its outputs are.
fn summary(
    manifest: &Path,
    index: usize,
    count: usize,
    results: &[(usize, &BatchClip, Outcome)],
    seconds: f64,
) -> serde_json::Value {
    let clips: Vec<serde_json::Value> = results
        .iter()
        .map(|(position, clip, outcome)| {
            let mut entry = serde_json::json!({
                "position": position, "clip": clip.name,
                "out": clip.job.out.display().to_string(),
            });
            let fields = match outcome {
                Outcome::Done { seconds, files } => serde_json::json!({
                    "status": "done", "seconds": seconds,
                    "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                }),
                Outcome::Skipped => serde_json::json!({"status": "skipped"}),
                Outcome::Failed(e) => serde_json::json!({"status": "failed", "error": e}),
            };
            for (k, v) in fields.as_object().expect("object") {
                entry[k] = v.clone();
            }
            entry
        })
        .collect();
    serde_json::json!({
        "event": "batch-summary", "manifest": manifest.display().to_string(),
        "index": index, "count": count, "seconds": seconds, "clips": clips,
    })
}

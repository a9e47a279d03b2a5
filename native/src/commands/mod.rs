//! One file per subcommand (its arguments and what it runs), and what they share: the session
//! a command opens, the job flow of `tune`/`edit`/`run`.

pub mod batch;
pub mod bench;
pub mod check;
pub mod demo_web;
pub mod edit;
pub mod pack;
pub mod plan;
mod prelude;
pub mod pretrain;
pub mod run;
pub mod sample;
pub mod score;
pub mod toy;
pub mod tune;

use std::time::Instant;

use tav_core::{Result, TavError};

use crate::cli::{Command, Common};
use crate::job::Session;
use crate::ui::{Mode, Ui};
use crate::{gpu, job, jobfile, models};

/// Runs the command.
pub fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Tune(args) => tune::command(args),
        Command::Edit(args) => edit::command(args),
        Command::Run(args) => run::command(args),
        Command::Batch(args) => batch::command(args),
        Command::Check(args) => check::command(args),
        Command::PackWeb(args) => pack::command(args),
        Command::DemoWeb(args) => demo_web::command(args),
        Command::Pretrain(args) => pretrain::command(args),
        Command::Sample(args) => sample::command(args),
        Command::Score(args) => score::command(args),
        Command::ToyClip(args) => toy::command(args),
        Command::Plan(args) => plan::command(args),
        Command::Bench(args) => bench::command(args),
    }
}

/// The console the common flags ask for: bars, quiet, or JSON lines.
pub(crate) fn ui_for(common: &Common) -> Ui {
    Ui::new(if common.quiet {
        Mode::Quiet
    } else if common.json {
        Mode::Json
    } else {
        Mode::Bars
    })
}

/// The model the common flags name.
pub(crate) fn model_choice(common: &Common) -> models::ModelChoice {
    models::ModelChoice {
        path: common.model.clone(),
        variant: common.variant.clone(),
        model_config: common.model_config.clone(),
        loras: common.loras.clone(),
    }
}

pub(crate) fn open_session(common: &Common, ui: &mut Ui) -> Result<Session> {
    let opened = gpu::open(&common.device).map_err(TavError::Device)?;
    let kernels = gpu::AttentionChoice::resolve(common.attention, common.kernels, &opened.device)
        .map_err(TavError::InvalidInput)?;
    let adapter = &opened.description;
    ui.say(&format!("GPU adapter: {adapter}"));
    ui.record(serde_json::json!({"event": "adapter", "adapter": adapter,
        "max_buffer_bytes": opened.limits.max_buffer_bytes, "kernels": kernels}));
    let mut session = Session::load(&model_choice(common), common.f16, opened.device, ui)?;
    session.limits = opened.limits;
    session.attention.kernels = kernels;
    session.recompute = common.recompute;
    session.attention.max_buffer_bytes = opened.limits.max_buffer_bytes;
    Ok(session)
}

/// Whether tuning recomputes blocks: as asked, or (`auto`) when the plan that keeps every
/// activation puts the tuning step over [`tav_core::plan::RECOMPUTE_ABOVE_BYTES`].
pub fn resolve_recompute(
    choice: gpu::RecomputeChoice,
    plans_keeping_everything: &[tav_core::plan::StepPlan],
) -> bool {
    match choice {
        gpu::RecomputeChoice::On => true,
        gpu::RecomputeChoice::Off => false,
        gpu::RecomputeChoice::Auto => tav_core::plan::recompute_needed(plans_keeping_everything),
    }
}

/// Tunes, then (with `edit`) inverts and edits. Every setting is checked and the output
/// folder shown creatable before the model loads; nothing is written until the model, the
/// plan and the clip are accepted: a refused input leaves no output folder behind.
pub(crate) fn run_job(common: &Common, spec: &jobfile::Job, edit: bool) -> Result<()> {
    let mut ui = ui_for(common);
    let out = spec.out.clone();
    spec.validate(true, edit)?;
    check_creatable(&out)?;
    // `--frames all`: the clip is read first, to know its length.
    let mut spec = spec.clone();
    spec.clip.resolve_all()?;
    let spec = &spec;
    let mut session_common = common.clone();
    session_common.model = spec.model.clone();
    session_common.model_config = spec.model_config.clone();
    session_common.loras = spec.loras.clone();
    let mut session = open_session(&session_common, &mut ui)?;
    let (frames, height, width) = (spec.clip.frames, spec.clip.height, spec.clip.width);
    if edit {
        // Editing may go window by window: the UNet then sees fewer frames than it tunes on.
        let unet_frames = spec.edit.unet_frames(frames);
        session.check_plan(unet_frames, height, width, &["inversion", "sampling"])?;
    }
    // Last: it also decides whether tuning recomputes blocks.
    session.check_plan(frames, height, width, &["tuning"])?;
    session.check_fits(frames, height, width)?;
    let started = Instant::now();
    // The clip is read and encoded once; tuning and editing share its posterior.
    let clip = spec.clip.read()?;
    create_output_folder(&out, &mut ui)?;
    let posterior = session.encode(&clip, &mut ui)?;
    let unet = job::tune(
        &session,
        &spec.clip,
        posterior.clone(),
        &spec.tune,
        &out,
        &mut ui,
    )?;
    ui.say(&format!(
        "tuned in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    if edit {
        job::edit(&session, &unet, &clip, posterior, &spec.edit, &out, &mut ui)?;
        ui.finish();
        ui.say(&format!(
            "done in {:.0} s: {} edited videos and a grid in {}",
            started.elapsed().as_secs_f64(),
            spec.edit.prompts.len(),
            out.display()
        ));
    }
    ui.finish();
    Ok(())
}

fn cannot_create(path: &std::path::Path, reason: impl std::fmt::Display) -> TavError {
    TavError::Write {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Shows that `out` can be created (or is a writable folder) without creating it, so a job
/// whose outputs cannot be written is refused before the model loads and leaves nothing
/// behind: the nearest existing ancestor must be a folder we can create in.
pub(crate) fn check_creatable(out: &std::path::Path) -> Result<()> {
    let mut existing = out;
    loop {
        match std::fs::metadata(existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(cannot_create(
                    out,
                    format!("{} is a file, not a folder", existing.display()),
                ));
            }
            Err(_) => match existing.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
                _ => {
                    existing = std::path::Path::new(".");
                    break;
                }
            },
        }
    }
    let probe = existing.join(format!(".tav-write-test-{}", std::process::id()));
    std::fs::create_dir(&probe)
        .map_err(|e| cannot_create(out, format!("{} is not writable ({e})", existing.display())))?;
    let _ = std::fs::remove_dir(&probe);
    Ok(())
}

/// The output folder and its `log.jsonl` (which also gets what was said before it existed).
pub(crate) fn create_output_folder(out: &std::path::Path, ui: &mut Ui) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| cannot_create(out, e))?;
    let _ = ui.log_to(&out.join("log.jsonl"));
    Ok(())
}

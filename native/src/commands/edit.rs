//! `tav edit`: invert a clip with tuned weights and sample one edit per prompt.

use super::prelude::*;

use tav_core::delta::TunedWeights;
use tav_core::weights::SafetensorsFile;

/// The arguments of `tav edit`.
#[derive(Args)]
pub struct EditCommand {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub clip: ClipArgs,
    #[command(flatten)]
    pub edit: EditArgs,
    /// Tuned weights from `tav tune` (the clip defaults to the one they were tuned on).
    #[arg(long)]
    pub tuned: PathBuf,
    /// An edit prompt; repeat for several edits.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
}

/// Runs `tav edit`.
pub fn command(args: EditCommand) -> Result<()> {
    let EditCommand {
        common,
        clip,
        edit,
        tuned,
        prompts,
    } = args;
    edit_only(&common, &clip, &edit, &tuned, prompts)
}

pub(crate) fn edit_only(
    common: &Common,
    clip_args: &ClipArgs,
    edit: &EditArgs,
    tuned: &std::path::Path,
    prompts: Vec<String>,
) -> Result<()> {
    let mut ui = ui_for(common);
    // The tuned file and every setting are checked before the model loads.
    let tuned_file = SafetensorsFile::open(tuned)?;
    let tuned_weights = TunedWeights::from_file(&tuned_file)?;
    let mut spec =
        jobfile::Job::for_edit(common, clip_args, edit, &tuned_weights.meta, prompts, tuned)?;
    spec.validate(false, true)?;
    check_creatable(&spec.out)?;
    // `--frames all`: the clip is read first, to know its length.
    spec.clip.resolve_all()?;
    let mut session = open_session(common, &mut ui)?;
    let unet = job::apply_tuned_weights(&session, &tuned_weights, tuned_file.path(), &mut ui)?;
    let unet_frames = spec.edit.unet_frames(spec.clip.frames);
    session.check_fits(unet_frames, spec.clip.height, spec.clip.width)?;
    session.check_plan(
        unet_frames,
        spec.clip.height,
        spec.clip.width,
        &["inversion", "sampling"],
    )?;
    let clip = spec.clip.read()?;
    create_output_folder(&spec.out, &mut ui)?;
    let posterior = session.encode(&clip, &mut ui)?;
    let written = job::edit(
        &session, &unet, &clip, posterior, &spec.edit, &spec.out, &mut ui,
    )?;
    ui.finish();
    ui.say(&format!(
        "wrote {} files to {}",
        written.len(),
        spec.out.display()
    ));
    Ok(())
}

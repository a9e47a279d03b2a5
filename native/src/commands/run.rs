//! `tav run`: the whole job from a job file (tune, invert, edit).

use super::prelude::*;

/// The arguments of `tav run`.
#[derive(Args)]
pub struct RunCommand {
    /// The job file (TOML).
    pub job: PathBuf,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub clip: ClipArgs,
    #[command(flatten)]
    pub tune: TuneArgs,
    #[command(flatten)]
    pub edit: EditArgs,
}

/// Runs `tav run`.
pub fn command(args: RunCommand) -> Result<()> {
    let RunCommand {
        job,
        common,
        clip,
        tune,
        edit,
    } = args;
    let spec = jobfile::Job::from_file(&job)?.with_overrides(&common, &clip, &tune, &edit);
    run_job(&common, &spec, true)
}

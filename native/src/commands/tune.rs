//! `tav tune`: tune the model on a clip and its prompt.

use super::prelude::*;

/// The arguments of `tav tune`.
#[derive(Args)]
pub struct TuneCommand {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub clip: ClipArgs,
    #[command(flatten)]
    pub tune: TuneArgs,
    /// The prompt that describes the clip, e.g. "a man is skiing".
    #[arg(long)]
    pub prompt: String,
}

/// Runs `tav tune`.
pub fn command(args: TuneCommand) -> Result<()> {
    let TuneCommand {
        common,
        clip,
        tune,
        prompt,
    } = args;
    let spec = jobfile::Job::from_flags(&common, &clip, &tune, prompt)?;
    run_job(&common, &spec, false)
}

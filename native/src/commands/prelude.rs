//! What the subcommands' files share (imported whole by each).

pub(crate) use std::path::PathBuf;
pub(crate) use std::time::Instant;

pub(crate) use burn::tensor::{Distribution, Tensor};
pub(crate) use clap::Args;
pub(crate) use tav_core::checkpoint::LoadOptions;
pub(crate) use tav_core::transformer::VideoAttentionOptions;
pub(crate) use tav_core::{Result, TavError};

pub(crate) use crate::cli::{ClipArgs, Common, EditArgs, TuneArgs};
pub(crate) use crate::commands::{bench, pack, plan, pretrain, sample, score, toy};
pub(crate) use crate::commands::{
    check_creatable, create_output_folder, model_choice, open_session, resolve_recompute, run_job,
    ui_for,
};
pub(crate) use crate::ui::Mode;
pub(crate) use crate::{demo, gpu, job, jobfile, models};

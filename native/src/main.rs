//! `tav`: Tune-A-Video on any GPU. Tune on a clip, invert it, edit it with new prompts.
//!
//! `main` parses the command line (`cli.rs`) and runs the subcommand (`commands/`, one file
//! each); a failure inside the GPU stack becomes an error that says what to reduce.

mod atomic;
mod cli;
mod commands;
mod demo;
mod gpu;
mod job;
mod jobfile;
mod models;
mod plot;
mod ui;
mod video;

use std::process::ExitCode;

use clap::Parser;
use tav_core::{Result, TavError};

use crate::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_catching_oom(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(TavError::Device(message)) => {
            eprintln!("error: {}", gpu_failure(&message));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; a panic inside the GPU stack (e.g. an allocation that failed) becomes
/// an error that says what to reduce.
fn run_catching_oom(cli: Cli) -> Result<()> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        commands::dispatch(cli.command)
    }));
    std::panic::set_hook(default_hook);
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            Err(TavError::Device(message))
        }
    }
}

/// A failure inside the GPU stack as an error a user can act on: allocation failures say
/// what to reduce.
fn gpu_failure(message: &str) -> TavError {
    let lower = message.to_lowercase();
    if lower.contains("memory") || lower.contains("allocate") || lower.contains("out of") {
        TavError::Device(format!(
            "out of GPU memory: reduce --frames or --width/--height (or close other GPU programs). \
             Details: {}",
            message
                .lines()
                .find(|l| l.contains("allocate"))
                .unwrap_or(message)
                .trim()
        ))
    } else {
        TavError::Device(format!("the GPU stack failed: {message}"))
    }
}

//! `tav`: Tune-A-Video on any GPU. Tune on a clip, invert it, edit it with new prompts.
//!
//! `main` parses the command line (`cli.rs`) and runs the subcommand (`commands/`, one file
//! each); a failure inside the GPU stack becomes an error that says what to reduce.

mod allocator;
mod atomic;
mod cli;
mod commands;
mod demo;
#[cfg(test)]
mod fuzz;
mod gpu;
mod job;
mod jobfile;
mod models;
mod plot;
mod ui;
mod video;

use std::process::ExitCode;

use clap::Parser;
use tav_core::TavError;

use crate::cli::Cli;

fn main() -> ExitCode {
    allocator::tune_for_tensor_work();
    let cli = Cli::parse();
    let message = match run_catching_panics(cli) {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Error(e)) => e.to_string(),
        Err(Failure::Panic(message)) => panic_message(&message),
    };
    eprintln!("error: {}", ui::printable(&message));
    ExitCode::FAILURE
}

/// How a command failed: an error it returned, or a panic (a bug, or the GPU stack failing
/// to allocate).
enum Failure {
    Error(TavError),
    Panic(String),
}

/// Runs the command; a panic is caught as a last resort, so it still ends in one clear line
/// and a failing exit code.
fn run_catching_panics(cli: Cli) -> std::result::Result<(), Failure> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        commands::dispatch(cli.command)
    }));
    std::panic::set_hook(default_hook);
    match outcome {
        Ok(result) => result.map_err(Failure::Error),
        Err(panic) => Err(Failure::Panic(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into()),
        )),
    }
}

/// Whether a panic's message is an allocation failure of the GPU stack (wgpu's and cubecl's
/// out-of-memory errors), as opposed to a bug.
fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_lowercase();
    [
        "out of memory",
        "outofmemory",
        "failed to allocate",
        "allocation failed",
        "unable to allocate",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// A panic as one line a user can act on: an allocation failure says what to reduce;
/// anything else is a bug in tav, said so, never relabelled.
fn panic_message(message: &str) -> String {
    let first = |m: &str| m.lines().next().unwrap_or("").trim().to_string();
    if is_out_of_memory(message) {
        format!(
            "out of GPU memory: reduce --frames or --width/--height (or close other GPU programs). \
             Details: {}",
            first(message)
        )
    } else {
        format!(
            "tav stopped on an internal error, a bug in tav (please report it with the command \
             you ran): {}",
            first(message)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only allocation failures are called out of memory; an index out of bounds is a bug.
    #[test]
    fn panics_are_labelled_by_what_they_are() {
        let bug = panic_message("index out of bounds: the len is 3 but the index is 7");
        assert!(
            bug.contains("bug in tav") && !bug.contains("memory"),
            "{bug}"
        );
        let oom = panic_message("Failed to allocate buffer of 4 GiB: OutOfMemory");
        assert!(oom.starts_with("out of GPU memory"), "{oom}");
        assert!(!is_out_of_memory(
            "called `Option::unwrap()` on a `None` value"
        ));
    }
}

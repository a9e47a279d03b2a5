//! `tav toy-clip`: a generated toy-world clip written as a video, with its caption.

use super::prelude::*;

use std::path::Path;

use tav_core::toyworld::{Background, ClipSpec, Colour, Path as Motion, Shape, ToyClip, render};
use tav_core::{Result, TavError};

use crate::video::{Clip, write_gif, write_mp4, write_png_frames};

/// Attribute choices from the command line; each `None` is drawn from the seed.
pub struct Choices {
    pub shape: Option<Shape>,
    pub colour: Option<Colour>,
    pub background: Option<Background>,
    pub path: Option<Motion>,
    /// Camera pan (see [`ClipSpec::pan`]).
    pub pan: f32,
}

/// The spec for `seed`, with the named attributes fixed.
pub fn spec(seed: u64, frames: usize, size: usize, choices: &Choices) -> Result<ClipSpec> {
    if frames == 0 || size == 0 || !size.is_multiple_of(64) {
        return Err(TavError::InvalidInput(format!(
            "a toy clip needs at least 1 frame and a size that is a positive multiple of 64 \
             (got {frames} frames of {size}×{size})"
        )));
    }
    check_pan(choices.pan)?;
    let mut spec = ClipSpec {
        pan: choices.pan,
        ..ClipSpec::random(seed, frames, size)
    };
    spec.shape = choices.shape.unwrap_or(spec.shape);
    spec.colour = choices.colour.unwrap_or(spec.colour);
    spec.background = choices.background.unwrap_or(spec.background);
    spec.path = choices.path.unwrap_or(spec.path);
    Ok(spec)
}

/// A pan is a share of the frame's width: any finite number (negative slides right).
pub fn check_pan(pan: f32) -> Result<()> {
    if pan.is_finite() {
        Ok(())
    } else {
        Err(TavError::InvalidInput(format!(
            "--pan {pan} is not a finite share of the frame"
        )))
    }
}

/// A drawn toy clip as a video clip (8 frames a second).
pub fn as_clip(drawn: ToyClip) -> Clip {
    Clip {
        width: drawn.spec.size as u32,
        height: drawn.spec.size as u32,
        fps: 8.0,
        frames: drawn.frames,
    }
}

/// Draws the clip and writes it to `out` (`.gif`, `.mp4`, or else a folder of PNG frames).
pub fn write(spec: &ClipSpec, out: &Path) -> Result<()> {
    let clip = as_clip(render(spec));
    let written = match out.extension().and_then(|e| e.to_str()) {
        Some("gif") => write_gif(out, &clip),
        Some("mp4") => write_mp4(out, &clip),
        _ => write_png_frames(out, &clip),
    };
    written.map_err(crate::job::video_error)
}

/// The arguments of `tav toy-clip`.
#[derive(Args)]
pub struct ToyClipCommand {
    /// Where to write it: `.gif`, `.mp4`, or a folder of PNG frames.
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(value_parser = crate::cli::frames, long, default_value_t = 8)]
    pub frames: usize,
    /// Width and height in pixels (a multiple of 64).
    #[arg(value_parser = crate::cli::side, long, default_value_t = 64)]
    pub size: usize,
    /// The shape [default: from the seed].
    #[arg(long, value_enum)]
    pub shape: Option<Shape>,
    /// The object's colour [default: from the seed].
    #[arg(long, value_enum)]
    pub colour: Option<Colour>,
    /// The background [default: from the seed].
    #[arg(long, value_enum)]
    pub background: Option<Background>,
    /// How the object moves [default: from the seed].
    #[arg(long, value_enum)]
    pub path: Option<Motion>,
    /// Camera pan: the background slides left by this share of the frame over the clip.
    #[arg(long, default_value_t = 0.0)]
    pub pan: f32,
}

/// Runs `tav toy-clip`.
pub fn command(args: ToyClipCommand) -> Result<()> {
    let ToyClipCommand {
        out,
        seed,
        frames,
        size,
        shape,
        colour,
        background,
        path,
        pan,
    } = args;
    let choices = toy::Choices {
        shape,
        colour,
        background,
        path,
        pan,
    };
    let spec = toy::spec(seed, frames, size, &choices)?;
    toy::write(&spec, &out)?;
    println!("{}", spec.caption());
    eprintln!(
        "wrote {} ({} frames of {size}×{size}, path {})",
        out.display(),
        frames,
        spec.path.name()
    );
    Ok(())
}

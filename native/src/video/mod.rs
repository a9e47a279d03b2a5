//! Video input and output for the command-line tool: reading source clips (MP4/H.264, GIF,
//! folders of PNG/JPEG frames), resizing them, and writing results (GIF, MP4/H.264, PNG).
//!
//! Everything is pure Rust plus the bundled OpenH264 build, so the tool works without ffmpeg
//! or any system library. Frames are kept as packed RGB8 (`width * height * 3` bytes,
//! row-major), the layout both the model code and the encoders want.
//!
//! Writers are atomic: output goes to a hidden `.name.partial` file next to the target and is
//! renamed over it only once complete, so an interrupted run never leaves a truncated video
//! that looks finished.
//!
//! Here: the clip, its sampling and errors, and reading by file type; `frames` (folders of
//! PNG/JPEG frames, PNG out), `animated_gif` (GIF in and out), `decode` (MP4 demux and H.264
//! decode), `encode` (H.264 encode and MP4 mux), `layout` (resize, grid).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

mod animated_gif;
mod decode;
mod encode;
mod frames;
mod layout;

pub use animated_gif::write_gif;
use animated_gif::*;
use decode::*;
pub use encode::write_mp4;
use frames::*;
pub use frames::{write_png, write_png_frames};
pub use layout::{grid, resize};

/// Frame rate given to clips whose source carries no timing (image folders, GIFs without delays).
/// 8 fps is what Tune-A-Video uses for its result videos.
pub const DEFAULT_FPS: f32 = 8.0;

/// Width in pixels of the blank strip between clips in a [`grid`].
const GRID_GAP: u32 = 4;

/// Colour of the strip between clips in a [`grid`] (white, so dark clips stay distinguishable).
const GRID_GAP_COLOR: [u8; 3] = [255, 255, 255];

/// MP4 media timescale for written video tracks. 90 kHz divides the common frame rates
/// (8, 10, 24, 25, 30, 29.97 = 30000/1001 ...) exactly, so sample durations have no drift.
const MP4_TIMESCALE: u32 = 90_000;

/// Seconds between H.264 keyframes in written MP4s: keeps seeking in players responsive
/// without costing much size on short clips.
const KEYFRAME_SECONDS: f32 = 2.0;

/// NeuQuant speed for GIF palettes (1 = best, 30 = fastest); 10 is the crate's suggested balance.
const GIF_QUANTIZER_SPEED: i32 = 10;

/// Largest GIF canvas we accept (64 Mpixels). The header alone can claim 65535x65535, which
/// would need a 12 GB canvas; real animations are far smaller.
const MAX_GIF_PIXELS: u64 = 1 << 26;

/// Browsers play GIF frame delays below 2 centiseconds as 10, so never write less than this.
const GIF_MIN_DELAY_CS: u16 = 2;

/// RGB8 frames of one clip, all the same size.
#[derive(Debug, Clone)]
pub struct Clip {
    pub width: u32,
    pub height: u32,
    /// Playback rate of `frames`. For a clip read with a stride this is the source rate divided
    /// by the stride, so writing the clip back out plays it at the original speed.
    pub fps: f32,
    /// Each frame is `width * height * 3` bytes of RGB8, row-major.
    pub frames: Vec<Vec<u8>>,
}

/// Which frames of a source to keep: `start`, `start + stride`, ... (`count` of them).
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub start: usize,
    pub stride: usize,
    pub count: usize,
}

impl Sampling {
    /// `count` for every frame from `start` on, at `stride`, to the clip's end (`--frames all`).
    pub const ALL: usize = usize::MAX;

    /// Index of the last source frame the sampling needs, or `None` if that overflows `usize`
    /// (with [`Sampling::ALL`], the first: at least one frame is needed).
    fn last_index(&self) -> Option<usize> {
        if self.count == Self::ALL {
            return Some(self.start);
        }
        let span = self.stride.checked_mul(self.count.checked_sub(1)?)?;
        self.start.checked_add(span)
    }

    /// Rejects samplings that can never be satisfied, before any file is opened.
    fn validate(&self, path: &Path) -> Result<()> {
        if self.stride == 0 || self.count == 0 {
            return Err(VideoError::InvalidInput {
                path: path.to_path_buf(),
                reason: format!(
                    "frame sampling needs stride >= 1 and count >= 1 (got stride {}, count {})",
                    self.stride, self.count
                ),
            });
        }
        Ok(())
    }
}

/// Everything that can go wrong reading or writing video. Every variant carries the path it
/// concerns, so messages can be shown to the user as they are.
#[derive(Debug)]
pub enum VideoError {
    /// The input path does not exist.
    NotFound { path: PathBuf },
    /// The operating system refused a read or write.
    Io { path: PathBuf, source: io::Error },
    /// The input is not a kind we can read (file type, container or codec).
    Unsupported { path: PathBuf, reason: String },
    /// An MP4 file without a video track (for example audio only).
    NoVideoTrack { path: PathBuf },
    /// The file claims a supported format but its contents are broken.
    Corrupt { path: PathBuf, reason: String },
    /// The clip has fewer frames than the sampling asks for.
    TooShort {
        path: PathBuf,
        /// Frames the clip actually has.
        available: usize,
        sampling: Sampling,
    },
    /// The request itself is invalid (zero stride, empty clip, wrong buffer size, bad fps...).
    InvalidInput { path: PathBuf, reason: String },
    /// An encoder (H.264, MP4, GIF, PNG) failed while writing.
    Encode { path: PathBuf, reason: String },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, VideoError>;

impl fmt::Display for VideoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { path } => write!(f, "{}: no such file or directory", path.display()),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Unsupported { path, reason } => {
                write!(f, "{}: unsupported input: {reason}", path.display())
            }
            Self::NoVideoTrack { path } => {
                write!(f, "{}: the MP4 file has no video track", path.display())
            }
            Self::Corrupt { path, reason } => {
                write!(
                    f,
                    "{}: corrupt or unreadable data: {reason}",
                    path.display()
                )
            }
            Self::TooShort {
                path,
                available,
                sampling,
            } => {
                let needed = sampling.last_index().map_or_else(
                    || "more frames than fit in memory".to_string(),
                    |last| format!("{} frames", last + 1),
                );
                let count = if sampling.count == Sampling::ALL {
                    "all".to_string()
                } else {
                    sampling.count.to_string()
                };
                write!(
                    f,
                    "{}: too short: the clip has {available} frames, but start {}, stride {}, \
                     count {count} needs {needed}",
                    path.display(),
                    sampling.start,
                    sampling.stride,
                )
            }
            Self::InvalidInput { path, reason } => write!(f, "{}: {reason}", path.display()),
            Self::Encode { path, reason } => {
                write!(f, "{}: could not write: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for VideoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Maps an I/O error to `NotFound` when that is what it means, `Io` otherwise.
fn io_error(path: &Path, source: io::Error) -> VideoError {
    if source.kind() == io::ErrorKind::NotFound {
        VideoError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        VideoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn corrupt(path: &Path, reason: impl fmt::Display) -> VideoError {
    VideoError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn unsupported(path: &Path, reason: impl fmt::Display) -> VideoError {
    VideoError::Unsupported {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn invalid(path: &Path, reason: impl fmt::Display) -> VideoError {
    VideoError::InvalidInput {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn encode_error(path: &Path, reason: impl fmt::Display) -> VideoError {
    VideoError::Encode {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Reads a clip: an .mp4/.m4v/.mov (H.264 video track; audio tracks ignored), a .gif, or a
/// directory of .png/.jpg/.jpeg frames (sorted by file name, numbers compared by value so
/// `f2.png` comes before `f10.png`).
///
/// Keeps frames `start, start + stride, ...` (`count` of them), decoding no more of the file
/// than needed. Frames are in display order; MP4 edit lists are ignored.
///
/// Errors name the path: missing or unreadable file, unsupported format or codec, no video
/// track, corrupt data, and "too short" when fewer than `count` frames exist at that
/// start/stride (the message says how many frames the clip has and how many were needed).
pub fn read_clip(path: &Path, sampling: Sampling) -> Result<Clip> {
    sampling.validate(path)?;
    let metadata = fs::metadata(path).map_err(|e| io_error(path, e))?;
    if metadata.is_dir() {
        return read_frame_dir(path, sampling);
    }
    match extension_lowercase(path).as_deref() {
        Some("mp4" | "m4v" | "mov") => read_mp4(path, sampling),
        Some("gif") => read_gif(path, sampling),
        other => Err(unsupported(
            path,
            format!(
                "file type {} (expected .mp4, .gif or a directory of .png/.jpg frames)",
                other.map_or_else(|| "without extension".to_string(), |e| format!(".{e}"))
            ),
        )),
    }
}

fn extension_lowercase(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// Collects the sampled frames as a source produces them, so every reader shares one notion
/// of which indices are wanted, when to stop, and what "too short" means.
struct FramePicker<'a> {
    path: &'a Path,
    sampling: Sampling,
    size: Option<(u32, u32)>,
    frames: Vec<Vec<u8>>,
}

impl<'a> FramePicker<'a> {
    fn new(path: &'a Path, sampling: Sampling) -> Self {
        Self {
            path,
            sampling,
            size: None,
            frames: Vec::new(),
        }
    }

    /// Whether source frame `index` is one of the sampled frames still to collect.
    fn wants(&self, index: usize) -> bool {
        let s = self.sampling;
        !self.is_done() && index >= s.start && (index - s.start).is_multiple_of(s.stride)
    }

    fn is_done(&self) -> bool {
        self.frames.len() >= self.sampling.count
    }

    /// Stores wanted source frame `index`; all frames of a clip must share one size.
    fn keep(&mut self, index: usize, width: u32, height: u32, rgb: Vec<u8>) -> Result<()> {
        match self.size {
            None => self.size = Some((width, height)),
            Some((w, h)) if (w, h) != (width, height) => {
                return Err(unsupported(
                    self.path,
                    format!(
                        "frame {index} is {width}x{height} but earlier frames are {w}x{h}; \
                         all frames must have the same size"
                    ),
                ));
            }
            Some(_) => {}
        }
        self.frames.push(rgb);
        Ok(())
    }

    /// Turns the collected frames into a clip; `available` is how many source frames were seen
    /// (only used for the error when the source ran out early).
    fn finish(self, available: usize, source_fps: f32) -> Result<Clip> {
        let all_there = self.sampling.count == Sampling::ALL && !self.frames.is_empty();
        if !self.is_done() && !all_there {
            return Err(VideoError::TooShort {
                path: self.path.to_path_buf(),
                available,
                sampling: self.sampling,
            });
        }
        let (width, height) = self.size.unwrap_or((0, 0));
        Ok(Clip {
            width,
            height,
            fps: source_fps / self.sampling.stride as f32,
            frames: self.frames,
        })
    }
}

/// Fails early with "too short" when the source length is known up front, so nothing is
/// decoded for a request that cannot be met.
fn check_length(path: &Path, sampling: Sampling, available: usize) -> Result<()> {
    match sampling.last_index() {
        Some(last) if last < available => Ok(()),
        _ => Err(VideoError::TooShort {
            path: path.to_path_buf(),
            available,
            sampling,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writes through `write` atomically ([`crate::atomic`]): never half a video.
fn write_atomically<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    crate::atomic::write_with(path, write, io_error)
}

/// Checks a clip before encoding, so encoders never see inconsistent buffers.
fn validate_frames(path: &Path, clip: &Clip) -> Result<()> {
    if clip.frames.is_empty() {
        return Err(invalid(path, "cannot write a clip with no frames"));
    }
    if clip.width == 0 || clip.height == 0 {
        return Err(invalid(
            path,
            format!("cannot write a {}x{} clip", clip.width, clip.height),
        ));
    }
    let expected = clip.width as usize * clip.height as usize * 3;
    if let Some((i, frame)) = clip
        .frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.len() != expected)
    {
        return Err(invalid(
            path,
            format!(
                "frame {i} has {} bytes, but a {}x{} RGB8 frame needs {expected}",
                frame.len(),
                clip.width,
                clip.height
            ),
        ));
    }
    Ok(())
}

/// Checks that a clip's frame rate can time a video (GIF and MP4 need one; PNG frames do not).
fn validate_fps(path: &Path, clip: &Clip) -> Result<()> {
    if clip.fps.is_finite() && clip.fps > 0.0 {
        Ok(())
    } else {
        Err(invalid(path, format!("invalid frame rate {}", clip.fps)))
    }
}

#[cfg(test)]
mod tests;

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

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Cursor, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{ImageBuffer, RgbImage};
use mp4::{
    AvcConfig, MediaConfig, MediaType, Mp4Config, Mp4Reader, Mp4Sample, Mp4Track, Mp4Writer,
    TrackConfig, TrackType, WriteBox,
};
use openh264::OpenH264API;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::encoder::{
    Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSource};

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
    /// Index of the last source frame the sampling needs, or `None` if that overflows `usize`.
    fn last_index(&self) -> Option<usize> {
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
                write!(
                    f,
                    "{}: too short: the clip has {available} frames, but start {}, stride {}, \
                     count {} needs {needed}",
                    path.display(),
                    sampling.start,
                    sampling.stride,
                    sampling.count,
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
        if !self.is_done() {
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

// --- Image folders ----------------------------------------------------------------------------

fn read_frame_dir(dir: &Path, sampling: Sampling) -> Result<Clip> {
    let files = list_frame_files(dir)?;
    if files.is_empty() {
        return Err(unsupported(
            dir,
            "the directory contains no .png/.jpg/.jpeg frames",
        ));
    }
    check_length(dir, sampling, files.len())?;
    let mut picker = FramePicker::new(dir, sampling);
    for (index, file) in files.iter().enumerate() {
        if picker.is_done() {
            break;
        }
        if picker.wants(index) {
            let image = read_image(file)?;
            let (width, height) = image.dimensions();
            picker.keep(index, width, height, image.into_raw())?;
        }
    }
    picker.finish(files.len(), DEFAULT_FPS)
}

/// Image files in `dir` in natural file-name order. Hidden files (such as our own
/// `.frame_0000.png.partial` or macOS `._` files) are skipped.
fn list_frame_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let is_image = matches!(
            extension_lowercase(&path).as_deref(),
            Some("png" | "jpg" | "jpeg")
        );
        if is_image && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| {
        let name = |p: &PathBuf| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        };
        natural_cmp(&name(a), &name(b))
    });
    Ok(files)
}

/// Compares strings so that runs of digits compare by numeric value ("f9" < "f10"); frame
/// folders written by other tools are often not zero-padded.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (num_a, rest_a) = split_digits(a);
                let (num_b, rest_b) = split_digits(b);
                let trimmed_a = num_a.trim_start_matches('0');
                let trimmed_b = num_b.trim_start_matches('0');
                let order = trimmed_a
                    .len()
                    .cmp(&trimmed_b.len())
                    .then_with(|| trimmed_a.cmp(trimmed_b))
                    .then_with(|| num_a.len().cmp(&num_b.len()));
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (rest_a, rest_b);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

fn read_image(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?;
    let image = reader.decode().map_err(|e| corrupt(path, e))?;
    Ok(image.to_rgb8())
}

// --- GIF --------------------------------------------------------------------------------------

fn read_gif(path: &Path, sampling: Sampling) -> Result<Clip> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options
        .read_info(BufReader::new(file))
        .map_err(|e| corrupt(path, e))?;
    let (width, height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    if width == 0 || height == 0 {
        return Err(corrupt(path, "the GIF has a zero-sized canvas"));
    }
    if u64::from(width) * u64::from(height) > MAX_GIF_PIXELS {
        return Err(unsupported(
            path,
            format!("a {width}x{height} GIF is too large"),
        ));
    }
    let mut canvas = GifCanvas::new(width, height);
    let mut picker = FramePicker::new(path, sampling);
    let mut seen = 0;
    let mut delay_cs = 0u64;
    // GIF frames are deltas over the previous canvas, so every frame up to the last wanted
    // one must be decoded, but none after it.
    while !picker.is_done() {
        let Some(frame) = decoder.read_next_frame().map_err(|e| corrupt(path, e))? else {
            break;
        };
        delay_cs += u64::from(effective_gif_delay(frame.delay));
        let saved = canvas.draw(frame);
        if picker.wants(seen) {
            picker.keep(seen, canvas.width, canvas.height, canvas.rgb.clone())?;
        }
        canvas.dispose(frame, saved);
        seen += 1;
    }
    let fps = if delay_cs > 0 {
        100.0 * seen as f32 / delay_cs as f32
    } else {
        DEFAULT_FPS
    };
    picker.finish(seen, fps)
}

/// The delay browsers actually use: 0 and 1 centiseconds are shown as 10.
fn effective_gif_delay(delay_cs: u16) -> u16 {
    if delay_cs < GIF_MIN_DELAY_CS {
        10
    } else {
        delay_cs
    }
}

/// The composited picture of a GIF: frames may cover only part of the canvas, be partly
/// transparent, and ask for their area to be cleared or restored afterwards.
struct GifCanvas {
    width: u32,
    height: u32,
    /// Transparent areas show as black.
    rgb: Vec<u8>,
}

impl GifCanvas {
    fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            rgb: vec![0; width as usize * height as usize * 3],
        }
    }

    /// Paints an RGBA frame onto the canvas. Returns the previous canvas when the frame asks
    /// to be undone afterwards (`DisposalMethod::Previous`).
    fn draw(&mut self, frame: &gif::Frame<'_>) -> Option<Vec<u8>> {
        let saved = (frame.dispose == gif::DisposalMethod::Previous).then(|| self.rgb.clone());
        let frame_width = usize::from(frame.width);
        if frame_width == 0 {
            return saved;
        }
        for (row, line) in frame.buffer.chunks_exact(frame_width * 4).enumerate() {
            for (col, pixel) in line.chunks_exact(4).enumerate() {
                if pixel[3] != 0
                    && let Some(at) = self.offset(frame, row, col)
                {
                    self.rgb[at..at + 3].copy_from_slice(&pixel[..3]);
                }
            }
        }
        saved
    }

    /// Applies the frame's disposal method once it has been shown.
    fn dispose(&mut self, frame: &gif::Frame<'_>, saved: Option<Vec<u8>>) {
        match frame.dispose {
            gif::DisposalMethod::Background => {
                for row in 0..usize::from(frame.height) {
                    for col in 0..usize::from(frame.width) {
                        if let Some(at) = self.offset(frame, row, col) {
                            self.rgb[at..at + 3].fill(0);
                        }
                    }
                }
            }
            gif::DisposalMethod::Previous => {
                if let Some(previous) = saved {
                    self.rgb = previous;
                }
            }
            gif::DisposalMethod::Keep | gif::DisposalMethod::Any => {}
        }
    }

    /// Byte offset on the canvas of a pixel of `frame`, or `None` when it falls outside
    /// (frames may legally overhang the canvas).
    fn offset(&self, frame: &gif::Frame<'_>, row: usize, col: usize) -> Option<usize> {
        let x = usize::from(frame.left) + col;
        let y = usize::from(frame.top) + row;
        let (width, height) = (self.width as usize, self.height as usize);
        (x < width && y < height).then_some((y * width + x) * 3)
    }
}

// --- MP4 / H.264 ------------------------------------------------------------------------------

fn read_mp4(path: &Path, sampling: Sampling) -> Result<Clip> {
    // The mp4 crate panics on some malformed files (unchecked unwraps in its sample tables);
    // a bad input file must give an error, not abort the program.
    panic::catch_unwind(AssertUnwindSafe(|| read_mp4_unguarded(path, sampling))).unwrap_or_else(
        |payload| {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(corrupt(
                path,
                format!("the MP4 structure is invalid ({detail})"),
            ))
        },
    )
}

fn read_mp4_unguarded(path: &Path, sampling: Sampling) -> Result<Clip> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    let mut reader = Mp4Reader::read_header(BufReader::new(file), size)
        .map_err(|e| corrupt(path, format!("not a readable MP4 file: {e}")))?;
    let track = H264Track::find(path, &reader)?;
    check_length(path, sampling, track.sample_count as usize)?;
    let mut decoder = start_decoder(path, &track)?;
    let mut picker = FramePicker::new(path, sampling);
    let mut shown = 0;
    let mut packet = Vec::new();
    for sample_id in 1..=track.sample_count {
        if picker.is_done() {
            break;
        }
        read_sample_annex_b(path, &mut reader, &track, sample_id, &mut packet)?;
        let picture = decoder.decode(&packet).map_err(|e| {
            corrupt(
                path,
                format!("H.264 sample {sample_id}: {}", decode_error(&e)),
            )
        })?;
        if let Some(yuv) = picture {
            offer_picture(&mut picker, shown, &yuv)?;
            shown += 1;
        }
    }
    // Pictures held back for reordering (B-frames) only come out when flushed.
    if !picker.is_done() {
        let remaining = decoder.flush_remaining().map_err(|e| {
            corrupt(
                path,
                format!("end of the H.264 stream: {}", decode_error(&e)),
            )
        })?;
        for yuv in &remaining {
            offer_picture(&mut picker, shown, yuv)?;
            shown += 1;
        }
    }
    picker.finish(shown, track.fps)
}

/// An OpenH264 decoder primed with the track's SPS/PPS. Flushing is left to the end of the
/// stream: flushing after every packet (the crate's default) emits B-frame streams out of
/// order and makes OpenH264 report errors.
fn start_decoder(path: &Path, track: &H264Track) -> Result<Decoder> {
    let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
    let mut decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| corrupt(path, format!("could not start the H.264 decoder: {e}")))?;
    decoder
        .decode(&track.parameter_sets)
        .map_err(|e| corrupt(path, format!("invalid H.264 SPS/PPS: {}", decode_error(&e))))?;
    Ok(decoder)
}

/// Reads sample `sample_id` (1-based) of the track into `packet` as Annex B.
fn read_sample_annex_b<R: io::Read + io::Seek>(
    path: &Path,
    reader: &mut Mp4Reader<R>,
    track: &H264Track,
    sample_id: u32,
    packet: &mut Vec<u8>,
) -> Result<()> {
    let sample = reader
        .read_sample(track.id, sample_id)
        .map_err(|e| corrupt(path, format!("cannot read video sample {sample_id}: {e}")))?
        .ok_or_else(|| corrupt(path, format!("video sample {sample_id} is missing")))?;
    avcc_to_annex_b(&sample.bytes, track.length_size, packet)
        .map_err(|e| corrupt(path, format!("video sample {sample_id}: {e}")))
}

/// Converts a decoded picture to RGB if the sampling wants it (conversion is the costly part,
/// so skipped pictures are never converted).
fn offer_picture(picker: &mut FramePicker<'_>, index: usize, yuv: &DecodedYUV<'_>) -> Result<()> {
    if !picker.wants(index) {
        return Ok(());
    }
    let (width, height) = yuv.dimensions();
    let mut rgb = vec![0; width * height * 3];
    yuv.write_rgb8(&mut rgb);
    picker.keep(index, width as u32, height as u32, rgb)
}

/// What the decoder needs to know about the H.264 track of an MP4.
struct H264Track {
    id: u32,
    sample_count: u32,
    fps: f32,
    /// Bytes per NAL length prefix in the samples (from avcC).
    length_size: usize,
    /// Every SPS and PPS from avcC, as Annex B, to prime the decoder.
    parameter_sets: Vec<u8>,
}

impl H264Track {
    /// Picks the first video track (lowest id) and checks it is H.264.
    fn find<R: io::Read + io::Seek>(path: &Path, reader: &Mp4Reader<R>) -> Result<Self> {
        let track = reader
            .tracks()
            .values()
            .filter(|t| matches!(t.track_type(), Ok(TrackType::Video)))
            .min_by_key(|t| t.track_id())
            .ok_or_else(|| VideoError::NoVideoTrack {
                path: path.to_path_buf(),
            })?;
        match track.media_type() {
            Ok(MediaType::H264) => {}
            Ok(other) => {
                return Err(unsupported(
                    path,
                    format!("video codec {other} (only H.264 is supported)"),
                ));
            }
            Err(_) => {
                return Err(unsupported(
                    path,
                    "the video codec is not H.264 (only H.264 is supported)",
                ));
            }
        }
        let Some(avc1) = track.trak.mdia.minf.stbl.stsd.avc1.as_ref() else {
            return Err(corrupt(path, "the H.264 track has no avc1 sample entry"));
        };
        let avcc = &avc1.avcc;
        let mut parameter_sets = Vec::new();
        for nal in avcc
            .sequence_parameter_sets
            .iter()
            .chain(&avcc.picture_parameter_sets)
        {
            parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
            parameter_sets.extend_from_slice(&nal.bytes);
        }
        if parameter_sets.is_empty() {
            return Err(corrupt(path, "the avcC box holds no SPS/PPS"));
        }
        check_sample_timing(path, track)?;
        Ok(Self {
            id: track.track_id(),
            sample_count: track.sample_count(),
            fps: track_fps(track),
            length_size: usize::from(avcc.length_size_minus_one & 0x3) + 1,
            parameter_sets,
        })
    }
}

/// The mp4 crate panics when reading a sample that its time table (stts) does not cover, so
/// such files are rejected up front with a proper error.
fn check_sample_timing(path: &Path, track: &Mp4Track) -> Result<()> {
    if !track.trafs.is_empty() {
        return Ok(()); // Fragmented files time samples per fragment instead.
    }
    let stts = &track.trak.mdia.minf.stbl.stts;
    let timed: u64 = stts.entries.iter().map(|e| u64::from(e.sample_count)).sum();
    let count = track.sample_count();
    if timed < u64::from(count) {
        return Err(corrupt(
            path,
            format!("the stts box gives times for {timed} of {count} video samples"),
        ));
    }
    Ok(())
}

/// Frames per second from the media header: samples / (duration / timescale). Values no
/// real video has (a corrupt header) fall back to the default rather than poisoning output
/// timing.
fn track_fps(track: &Mp4Track) -> f32 {
    let mdhd = &track.trak.mdia.mdhd;
    let count = f64::from(track.sample_count());
    if mdhd.duration == 0 || mdhd.timescale == 0 || count == 0.0 {
        return DEFAULT_FPS;
    }
    let fps = count * f64::from(mdhd.timescale) / mdhd.duration as f64;
    if (0.1..=1000.0).contains(&fps) {
        fps as f32
    } else {
        DEFAULT_FPS
    }
}

/// Describes an OpenH264 decoding failure by name: the crate's own message is only the raw
/// status bit set ("Native:4"), which means nothing to a user.
fn decode_error(error: &openh264::Error) -> String {
    const STATUS_BITS: [(i64, &str); 10] = [
        (0x02, "reference frame lost"),
        (0x04, "bitstream error"),
        (0x08, "dependent layer lost"),
        (0x10, "missing SPS/PPS"),
        (0x20, "error concealed"),
        (0x40, "broken reference list"),
        (0x1000, "invalid argument"),
        (0x2000, "decoder not initialised"),
        (0x4000, "out of memory"),
        (0x8000, "output buffer too small"),
    ];
    let code = error.native_code();
    let names: Vec<&str> = STATUS_BITS
        .iter()
        .filter(|(bit, _)| code & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        error.to_string()
    } else {
        format!("{} (OpenH264 status {code:#x})", names.join(", "))
    }
}

/// Rewrites an MP4 sample (NAL units each prefixed by a big-endian length of `length_size`
/// bytes) as an Annex B byte stream (each NAL prefixed by `00 00 00 01`), which is what
/// OpenH264 parses.
fn avcc_to_annex_b(
    sample: &[u8],
    length_size: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    out.clear();
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err(format!("truncated NAL length ({} bytes left)", rest.len()));
        }
        let (prefix, tail) = rest.split_at(length_size);
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len > tail.len() {
            return Err(format!(
                "NAL unit of {len} bytes overruns the sample ({} bytes left)",
                tail.len()
            ));
        }
        let (nal, tail) = tail.split_at(len);
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
        rest = tail;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resizing and layout
// ---------------------------------------------------------------------------------------------

/// Resizes every frame to `width`×`height` with a Catmull-Rom (bicubic) filter, which
/// antialiases when shrinking. Sizes below 1 are treated as 1.
///
/// With `center_crop`, first crops the largest centred region with the target aspect ratio
/// (nothing is distorted, edges are lost); without, stretches the whole frame.
pub fn resize(clip: &Clip, width: u32, height: u32, center_crop: bool) -> Clip {
    let (width, height) = (width.max(1), height.max(1));
    let frames = clip
        .frames
        .iter()
        .map(|frame| resize_frame(clip, frame, width, height, center_crop))
        .collect();
    Clip {
        width,
        height,
        fps: clip.fps,
        frames,
    }
}

fn resize_frame(clip: &Clip, frame: &[u8], width: u32, height: u32, center_crop: bool) -> Vec<u8> {
    let source = frame_image(clip.width, clip.height, frame);
    if source.width() == 0 || source.height() == 0 {
        return vec![0; width as usize * height as usize * 3];
    }
    let (x, y, crop_w, crop_h) = if center_crop {
        centered_crop(source.width(), source.height(), width, height)
    } else {
        (0, 0, source.width(), source.height())
    };
    if (x, y, crop_w, crop_h) == (0, 0, width, height) {
        return source.into_raw();
    }
    let cropped = imageops::crop_imm(&source, x, y, crop_w, crop_h);
    imageops::resize(&*cropped, width, height, FilterType::CatmullRom).into_raw()
}

/// Wraps a frame as an image. `Clip` fields are public, so a frame can have the wrong length;
/// missing bytes are treated as black rather than panicking.
fn frame_image(width: u32, height: u32, frame: &[u8]) -> RgbImage {
    let len = width as usize * height as usize * 3;
    let mut data = frame.get(..len).unwrap_or(frame).to_vec();
    data.resize(len, 0);
    ImageBuffer::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(0, 0))
}

/// The largest centred `(x, y, width, height)` region of a `src_w`×`src_h` frame whose aspect
/// ratio is `dst_w`:`dst_h`.
fn centered_crop(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> (u32, u32, u32, u32) {
    let (sw, sh, dw, dh) = (
        u64::from(src_w),
        u64::from(src_h),
        u64::from(dst_w),
        u64::from(dst_h),
    );
    if sw * dh > dw * sh {
        // Source is wider than the target: keep the full height.
        let crop_w = ((sh * dw + dh / 2) / dh).clamp(1, sw) as u32;
        ((src_w - crop_w) / 2, 0, crop_w, src_h)
    } else {
        let crop_h = ((sw * dh + dw / 2) / dw).clamp(1, sh) as u32;
        (0, (src_h - crop_h) / 2, src_w, crop_h)
    }
}

/// A grid video with the clips laid out left to right in one row (source first, then edits),
/// separated by a small white gap. Every clip is resized to the height of the first, keeping
/// its aspect ratio. Clips should have the same frame count; if they do not, the grid has as
/// many frames as the shortest. The frame rate is the first clip's. An empty slice gives an
/// empty clip.
pub fn grid(clips: &[Clip]) -> Clip {
    let Some(first) = clips.first() else {
        return Clip {
            width: 0,
            height: 0,
            fps: DEFAULT_FPS,
            frames: Vec::new(),
        };
    };
    let height = first.height.max(1);
    let scaled: Vec<Clip> = clips
        .iter()
        .map(|clip| resize(clip, scaled_width(clip, height), height, false))
        .collect();
    let frame_count = scaled.iter().map(|c| c.frames.len()).min().unwrap_or(0);
    let gaps = GRID_GAP * (scaled.len() as u32 - 1);
    let width = scaled.iter().map(|c| c.width).sum::<u32>() + gaps;
    let frames = (0..frame_count)
        .map(|i| grid_frame(&scaled, i, width, height))
        .collect();
    Clip {
        width,
        height,
        fps: first.fps,
        frames,
    }
}

/// Width that keeps `clip`'s aspect ratio at the given height.
fn scaled_width(clip: &Clip, height: u32) -> u32 {
    if clip.height == 0 {
        return clip.width.max(1);
    }
    let width = (u64::from(clip.width) * u64::from(height) + u64::from(clip.height) / 2)
        / u64::from(clip.height);
    width.clamp(1, u64::from(u32::MAX)) as u32
}

/// Frame `index` of the grid: each clip's frame copied row by row at its column offset.
fn grid_frame(clips: &[Clip], index: usize, width: u32, height: u32) -> Vec<u8> {
    let row_len = width as usize * 3;
    let mut out: Vec<u8> = GRID_GAP_COLOR
        .iter()
        .copied()
        .cycle()
        .take(row_len * height as usize)
        .collect();
    let mut x0 = 0;
    for clip in clips {
        let clip_row = clip.width as usize * 3;
        for (y, src) in clip.frames[index].chunks_exact(clip_row).enumerate() {
            let at = y * row_len + x0;
            out[at..at + clip_row].copy_from_slice(src);
        }
        x0 += clip_row + GRID_GAP as usize * 3;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writes through `write` into a hidden `.name.partial` file next to `path`, flushes it to
/// disk, then renames it over `path`. Parent directories are created. On failure the partial
/// file is removed and `path` is left untouched.
fn write_atomically<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    let Some(file_name) = path.file_name() else {
        return Err(invalid(path, "the output path has no file name"));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    let partial = parent.join(format!(".{}.partial", file_name.to_string_lossy()));
    let result = write_and_sync(&partial, write)
        .and_then(|()| fs::rename(&partial, path).map_err(|e| io_error(path, e)));
    if result.is_err() {
        // Best effort: the original error matters more than a failed clean-up.
        let _ = fs::remove_file(&partial);
    }
    result
}

fn write_and_sync<F>(partial: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    let file = File::create(partial).map_err(|e| io_error(partial, e))?;
    let mut writer = BufWriter::new(file);
    write(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(|e| io_error(partial, e.into_error()))?;
    file.sync_all().map_err(|e| io_error(partial, e))
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

// --- GIF --------------------------------------------------------------------------------------

/// Writes a looping GIF. Each frame gets its own NeuQuant palette; delays follow `clip.fps`
/// (in whole centiseconds, with rounding spread over frames so the total duration is right).
pub fn write_gif(path: &Path, clip: &Clip) -> Result<()> {
    validate_frames(path, clip)?;
    validate_fps(path, clip)?;
    let (Ok(width), Ok(height)) = (u16::try_from(clip.width), u16::try_from(clip.height)) else {
        return Err(invalid(
            path,
            format!(
                "{}x{} is too large for GIF (max 65535)",
                clip.width, clip.height
            ),
        ));
    };
    write_atomically(path, |out| {
        let mut encoder =
            gif::Encoder::new(out, width, height, &[]).map_err(|e| encode_error(path, e))?;
        encoder
            .set_repeat(gif::Repeat::Infinite)
            .map_err(|e| encode_error(path, e))?;
        for (i, rgb) in clip.frames.iter().enumerate() {
            let mut frame = gif::Frame::from_rgb_speed(width, height, rgb, GIF_QUANTIZER_SPEED);
            frame.delay = gif_delay(i, clip.fps);
            encoder
                .write_frame(&frame)
                .map_err(|e| encode_error(path, e))?;
        }
        Ok(())
    })
}

/// Delay of frame `index` in centiseconds: the difference of rounded cumulative times, so
/// rounding errors do not accumulate (e.g. 3 fps gives 33, 34, 33 ...).
fn gif_delay(index: usize, fps: f32) -> u16 {
    let at = |i: usize| (i as f64 * 100.0 / f64::from(fps)).round();
    let delay = (at(index + 1) - at(index)).clamp(0.0, f64::from(u16::MAX)) as u16;
    delay.max(GIF_MIN_DELAY_CS)
}

// --- PNG --------------------------------------------------------------------------------------

/// Writes one RGB8 image as PNG, atomically.
pub fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let expected = width as usize * height as usize * 3;
    if width == 0 || height == 0 || rgb.len() != expected {
        return Err(invalid(
            path,
            format!(
                "a {width}x{height} RGB8 image needs {expected} bytes, got {}",
                rgb.len()
            ),
        ));
    }
    write_atomically(path, |out| {
        let mut encoder = png::Encoder::new(out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| encode_error(path, e))?;
        writer
            .write_image_data(rgb)
            .map_err(|e| encode_error(path, e))?;
        writer.finish().map_err(|e| encode_error(path, e))
    })
}

/// Writes the frames as `dir/frame_0000.png`, `frame_0001.png`, ... (each atomically), then
/// removes any higher-numbered `frame_NNNN.png` left by an earlier, longer clip, so that
/// reading the folder back gives exactly this clip.
pub fn write_png_frames(dir: &Path, clip: &Clip) -> Result<()> {
    validate_frames(dir, clip)?;
    for (i, frame) in clip.frames.iter().enumerate() {
        write_png(
            &dir.join(frame_file_name(i)),
            clip.width,
            clip.height,
            frame,
        )?;
    }
    remove_stale_frames(dir, clip.frames.len())
}

fn frame_file_name(index: usize) -> String {
    format!("frame_{index:04}.png")
}

fn remove_stale_frames(dir: &Path, keep: usize) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let index = name
            .strip_prefix("frame_")
            .and_then(|rest| rest.strip_suffix(".png"))
            .filter(|digits| digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<usize>().ok());
        if index.is_some_and(|i| i >= keep && frame_file_name(i) == name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(())
}

// --- MP4 / H.264 ------------------------------------------------------------------------------

/// Writes H.264 (OpenH264, constrained baseline, BT.601 limited range signalled in the VUI)
/// in an MP4 container, atomically. Every frame becomes one sample with constant duration;
/// keyframes are marked as sync samples. H.264 4:2:0 needs even sizes, so an odd width or
/// height is padded by one pixel (repeating the last column/row): the file is then 1 pixel
/// larger than the clip.
pub fn write_mp4(path: &Path, clip: &Clip) -> Result<()> {
    validate_frames(path, clip)?;
    validate_fps(path, clip)?;
    let stream = encode_h264(path, clip)?;
    let bytes = mux_mp4(&stream, clip.fps).map_err(|e| encode_error(path, e))?;
    write_atomically(path, |out| {
        out.write_all(&bytes).map_err(|e| io_error(path, e))
    })
}

/// An encoded clip, ready to be put in a container.
struct H264Stream {
    width: u32,
    height: u32,
    sps: Vec<u8>,
    pps: Vec<u8>,
    /// One access unit per frame, NAL units in AVCC form (4-byte big-endian length prefix),
    /// and whether it is a keyframe.
    samples: Vec<(Vec<u8>, bool)>,
}

fn encode_h264(path: &Path, clip: &Clip) -> Result<H264Stream> {
    let width = clip.width + clip.width % 2;
    let height = clip.height + clip.height % 2;
    check_h264_size(path, clip)?;
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_config(clip))
        .map_err(|e| encode_error(path, format!("could not start the H.264 encoder: {e}")))?;
    let mut stream = H264Stream {
        width,
        height,
        sps: Vec::new(),
        pps: Vec::new(),
        samples: Vec::with_capacity(clip.frames.len()),
    };
    for (i, frame) in clip.frames.iter().enumerate() {
        let padded = pad_to_even(frame, clip.width, clip.height);
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(
            &padded,
            (width as usize, height as usize),
        ));
        let encoded = encoder
            .encode(&yuv)
            .map_err(|e| encode_error(path, format!("H.264 encoding failed at frame {i}: {e}")))?;
        let keyframe = encoded.frame_type() == FrameType::IDR;
        let mut sample = Vec::new();
        for layer in (0..encoded.num_layers()).filter_map(|l| encoded.layer(l)) {
            for nal in (0..layer.nal_count()).filter_map(|n| layer.nal_unit(n)) {
                stream.add_nal(strip_start_code(nal), &mut sample);
            }
        }
        if sample.is_empty() {
            return Err(encode_error(
                path,
                format!("the H.264 encoder produced no picture for frame {i}"),
            ));
        }
        stream.samples.push((sample, keyframe));
    }
    if stream.sps.len() < 4 || stream.pps.is_empty() {
        return Err(encode_error(path, "the H.264 encoder produced no SPS/PPS"));
    }
    Ok(stream)
}

impl H264Stream {
    /// Routes one NAL unit: parameter sets go to the avcC box (MP4 "avc1" keeps them out of
    /// the samples), delimiters are dropped, everything else is appended to the sample.
    fn add_nal(&mut self, nal: &[u8], sample: &mut Vec<u8>) {
        const SPS: u8 = 7;
        const PPS: u8 = 8;
        const ACCESS_UNIT_DELIMITER: u8 = 9;
        let Some(&header) = nal.first() else { return };
        match header & 0x1f {
            SPS => {
                if self.sps.is_empty() {
                    self.sps = nal.to_vec();
                }
            }
            PPS => {
                if self.pps.is_empty() {
                    self.pps = nal.to_vec();
                }
            }
            ACCESS_UNIT_DELIMITER => {}
            _ => {
                // NAL units are far below 4 GiB; the encoder caps them at frame size.
                sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                sample.extend_from_slice(nal);
            }
        }
    }
}

/// OpenH264 encodes pictures from 16x16 up to 3840x2160 (either orientation); anything else
/// is refused here with a clear message instead of an opaque encoder status code.
fn check_h264_size(path: &Path, clip: &Clip) -> Result<()> {
    let (width, height) = (clip.width + clip.width % 2, clip.height + clip.height % 2);
    let (long, short) = (width.max(height), width.min(height));
    if short < 16 || long > 3840 || short > 2160 {
        return Err(invalid(
            path,
            format!(
                "H.264 output must be between 16x16 and 3840x2160 pixels, but the clip is \
                 {}x{}; resize it first",
                clip.width, clip.height
            ),
        ));
    }
    Ok(())
}

/// Encoder settings: never skip frames (every frame must become a sample); constant quality
/// (rate control off, OpenH264's fixed QP 26: clean pictures for short clips, size follows
/// content, and no rate-control warnings on stderr); regular keyframes; and colour signalling
/// matching OpenH264's BT.601 limited-range RGB conversion so players show the right colours.
fn encoder_config(clip: &Clip) -> EncoderConfig {
    let keyframe_interval = (clip.fps * KEYFRAME_SECONDS).round().max(1.0) as u32;
    EncoderConfig::new()
        .skip_frames(false)
        .rate_control_mode(RateControlMode::Off)
        .max_frame_rate(FrameRate::from_hz(clip.fps))
        .intra_frame_period(IntraFramePeriod::from_num_frames(keyframe_interval))
        .vui(VuiConfig::bt601())
}

/// Pads an odd-sized frame to even width and height by repeating its last column and row.
fn pad_to_even(frame: &[u8], width: u32, height: u32) -> Cow<'_, [u8]> {
    if width.is_multiple_of(2) && height.is_multiple_of(2) {
        return Cow::Borrowed(frame);
    }
    let (w, h) = (width as usize, height as usize);
    let row = w * 3;
    let padded_row = (w + w % 2) * 3;
    let mut out = Vec::with_capacity(padded_row * (h + h % 2));
    for line in frame.chunks_exact(row) {
        out.extend_from_slice(line);
        if w % 2 == 1 {
            out.extend_from_slice(&line[row - 3..]);
        }
    }
    if h % 2 == 1 {
        let last = out.len() - padded_row;
        out.extend_from_within(last..);
    }
    Cow::Owned(out)
}

/// Removes an Annex B start code (`00 00 01` or `00 00 00 01`) from an encoder NAL unit.
fn strip_start_code(nal: &[u8]) -> &[u8] {
    nal.strip_prefix(&[0, 0, 0, 1])
        .or_else(|| nal.strip_prefix(&[0, 0, 1]))
        .unwrap_or(nal)
}

/// Builds the MP4 file in memory with the mp4 crate's writer, then fixes the header flags it
/// leaves at values some players reject.
fn mux_mp4(stream: &H264Stream, fps: f32) -> std::result::Result<Vec<u8>, String> {
    let (Ok(width), Ok(height)) = (u16::try_from(stream.width), u16::try_from(stream.height))
    else {
        return Err(format!(
            "{}x{} is too large for MP4",
            stream.width, stream.height
        ));
    };
    let sample_duration = (f64::from(MP4_TIMESCALE) / f64::from(fps)).round().max(1.0) as u32;
    let config = Mp4Config {
        major_brand: (*b"isom").into(),
        minor_version: 512,
        compatible_brands: [b"isom", b"iso2", b"avc1", b"mp41"]
            .into_iter()
            .map(|b| (*b).into())
            .collect(),
        timescale: 1000,
    };
    let track = TrackConfig {
        track_type: TrackType::Video,
        timescale: MP4_TIMESCALE,
        language: "und".to_string(),
        media_conf: MediaConfig::AvcConfig(AvcConfig {
            width,
            height,
            seq_param_set: stream.sps.clone(),
            pic_param_set: stream.pps.clone(),
        }),
    };
    let mut writer =
        Mp4Writer::write_start(Cursor::new(Vec::new()), &config).map_err(|e| e.to_string())?;
    writer.add_track(&track).map_err(|e| e.to_string())?;
    for (i, (bytes, keyframe)) in stream.samples.iter().enumerate() {
        let sample = Mp4Sample {
            start_time: i as u64 * u64::from(sample_duration),
            duration: sample_duration,
            rendering_offset: 0,
            is_sync: *keyframe,
            bytes: mp4::Bytes::copy_from_slice(bytes),
        };
        writer.write_sample(1, &sample).map_err(|e| e.to_string())?;
    }
    writer.write_end().map_err(|e| e.to_string())?;
    let mut bytes = writer.into_writer().into_inner();
    fix_moov_for_players(&mut bytes)?;
    Ok(bytes)
}

/// The mp4 crate writes `tkhd` without the "in movie" flag, `vmhd` with flags 0 (ISO 14496-12
/// requires 1; Android's player refuses otherwise) and `mvhd.next_track_id` 1 although track 1
/// exists. Re-reads the finished file's `moov` (the last box), corrects these, and writes it
/// back in place; sample offsets point into `mdat`, which comes before, so they stay valid.
fn fix_moov_for_players(bytes: &mut Vec<u8>) -> std::result::Result<(), String> {
    const TRACK_ENABLED_IN_MOVIE: u32 = 0x1 | 0x2;
    let reader = Mp4Reader::read_header(Cursor::new(bytes.as_slice()), bytes.len() as u64)
        .map_err(|e| format!("cannot re-read the written MP4: {e}"))?;
    let mut moov = reader.moov;
    let moov_start =
        top_level_box_offset(bytes, b"moov").ok_or("the written MP4 has no moov box")?;
    moov.mvhd.next_track_id = moov.traks.len() as u32 + 1;
    for trak in &mut moov.traks {
        trak.tkhd.flags = TRACK_ENABLED_IN_MOVIE;
        if let Some(vmhd) = trak.mdia.minf.vmhd.as_mut() {
            vmhd.flags = 1;
        }
    }
    bytes.truncate(moov_start);
    moov.write_box(&mut *bytes)
        .map_err(|e| format!("cannot rewrite the moov box: {e}"))?;
    Ok(())
}

/// Byte offset of the first top-level box of the given type, walking the box headers
/// (32-bit sizes, 64-bit "largesize" when the size field is 1).
fn top_level_box_offset(bytes: &[u8], kind: &[u8; 4]) -> Option<usize> {
    let mut at = 0usize;
    while at.checked_add(8)? <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().ok()?);
        if &bytes[at + 4..at + 8] == kind {
            return Some(at);
        }
        let size = match size32 {
            0 => return None,
            1 => usize::try_from(u64::from_be_bytes(
                bytes.get(at + 8..at + 16)?.try_into().ok()?,
            ))
            .ok()?,
            n => n as usize,
        };
        if size < 8 {
            return None;
        }
        at = at.checked_add(size)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_video(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/videos")
            .join(name)
    }

    /// A fresh, empty directory under the system temp dir, one per test (tests run in
    /// parallel), removed again when the test ends, pass or fail.
    struct ScratchDir(PathBuf);

    impl std::ops::Deref for ScratchDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn scratch_dir(name: &str) -> ScratchDir {
        let dir =
            std::env::temp_dir().join(format!("tav-video-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }

    fn sampling(start: usize, stride: usize, count: usize) -> Sampling {
        Sampling {
            start,
            stride,
            count,
        }
    }

    /// Smooth moving colour waves: easy for codecs, so round-trip errors stay small.
    fn synthetic_clip(width: u32, height: u32, frames: usize) -> Clip {
        let frames = (0..frames)
            .map(|t| {
                let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
                for y in 0..height {
                    for x in 0..width {
                        let (xf, yf, tf) = (x as f32, y as f32, t as f32);
                        rgb.push((128.0 + 90.0 * ((xf + 3.0 * tf) / 14.0).sin()) as u8);
                        rgb.push((128.0 + 90.0 * ((yf + 2.0 * tf) / 17.0).cos()) as u8);
                        rgb.push((128.0 + 90.0 * ((xf + yf - 2.0 * tf) / 23.0).sin()) as u8);
                    }
                }
                rgb
            })
            .collect();
        Clip {
            width,
            height,
            fps: 10.0,
            frames,
        }
    }

    fn variance(frame: &[u8]) -> f64 {
        let n = frame.len() as f64;
        let mean = frame.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        frame
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let total: u64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum();
        total as f64 / a.len() as f64
    }

    fn no_partial_files(dir: &Path) -> bool {
        fs::read_dir(dir).expect("read scratch dir").all(|e| {
            !e.expect("entry")
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
    }

    #[test]
    fn car_turn_decodes_sampled_frames() {
        let clip = read_clip(&shared_video("car-turn.mp4"), sampling(0, 2, 24)).expect("decode");
        assert_eq!((clip.width, clip.height), (480, 480));
        assert_eq!(clip.frames.len(), 24);
        assert!(
            (clip.fps - 5.0).abs() < 0.1,
            "fps {} (10 fps source, stride 2)",
            clip.fps
        );
        for (i, frame) in clip.frames.iter().enumerate() {
            assert_eq!(frame.len(), 480 * 480 * 3);
            assert!(variance(frame) > 100.0, "frame {i} looks blank");
        }
        for (i, pair) in clip.frames.windows(2).enumerate() {
            let diff = mean_abs_diff(&pair[0], &pair[1]);
            assert!(diff > 0.5, "frames {i} and {} are identical", i + 1);
        }
    }

    /// Decoding is in display order: with B-frames, a wrong order would make some frame
    /// differ more from its neighbour than from the frame two steps away.
    #[test]
    fn car_turn_frames_are_in_display_order() {
        let clip = read_clip(&shared_video("car-turn.mp4"), sampling(0, 1, 80)).expect("decode");
        assert_eq!(clip.frames.len(), 80);
        let f = &clip.frames;
        for i in 0..f.len() - 2 {
            let next = mean_abs_diff(&f[i], &f[i + 1]);
            let skip = mean_abs_diff(&f[i], &f[i + 2]);
            assert!(
                next <= skip * 1.05,
                "frame order suspicious at {i}: {next} vs {skip}"
            );
        }
    }

    /// man-skiing and rabbit-watermelon carry AAC audio; 718 is not a multiple of 16, so the
    /// decoder must apply the SPS cropping.
    #[test]
    fn clips_with_audio_and_cropped_sizes_decode() {
        let clip = read_clip(&shared_video("man-skiing.mp4"), sampling(10, 3, 8)).expect("decode");
        assert_eq!((clip.width, clip.height, clip.frames.len()), (718, 718, 8));
        assert!(clip.frames.iter().all(|f| variance(f) > 100.0));
        assert!((clip.fps - 29.97 / 3.0).abs() < 0.01, "fps {}", clip.fps);
        let clip = read_clip(&shared_video("man-surfing.mp4"), sampling(0, 1, 72)).expect("decode");
        assert_eq!((clip.width, clip.height, clip.frames.len()), (656, 656, 72));
        let clip =
            read_clip(&shared_video("rabbit-watermelon.mp4"), sampling(150, 4, 9)).expect("decode");
        assert_eq!((clip.width, clip.height, clip.frames.len()), (718, 718, 9));
    }

    #[test]
    fn too_short_names_the_frame_count() {
        let path = shared_video("car-turn.mp4");
        let Err(err) = read_clip(&path, sampling(20, 3, 24)) else {
            panic!("80 frames cannot give 24 at stride 3 from 20");
        };
        assert!(
            matches!(err, VideoError::TooShort { available: 80, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("too short"), "{message}");
        assert!(message.contains("80 frames"), "{message}");
        assert!(message.contains("car-turn.mp4"), "{message}");
    }

    #[test]
    fn missing_and_garbage_files_name_the_path() {
        let dir = scratch_dir("bad-inputs");
        let missing = dir.join("nope.mp4");
        let err = read_clip(&missing, sampling(0, 1, 1)).expect_err("missing file");
        assert!(matches!(err, VideoError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.mp4"));

        let garbage = dir.join("x.mp4");
        // A fixed xorshift sequence: random-looking bytes, same every run.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fs::write(&garbage, bytes).expect("write garbage");
        let err = read_clip(&garbage, sampling(0, 1, 1)).expect_err("garbage file");
        assert!(matches!(err, VideoError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("x.mp4"), "{err}");

        let text = dir.join("notes.txt");
        fs::write(&text, "hello").expect("write text");
        let err = read_clip(&text, sampling(0, 1, 1)).expect_err("text file");
        assert!(matches!(err, VideoError::Unsupported { .. }), "{err:?}");

        let err = read_clip(&garbage, sampling(0, 0, 1)).expect_err("zero stride");
        assert!(matches!(err, VideoError::InvalidInput { .. }), "{err:?}");
    }

    #[test]
    fn broken_and_audio_only_mp4s_are_rejected() {
        let dir = scratch_dir("broken-mp4");
        let source = fs::read(shared_video("car-turn.mp4")).expect("read car-turn");

        let truncated = dir.join("truncated.mp4");
        fs::write(&truncated, &source[..source.len() / 2]).expect("write truncated");
        let Err(err) = read_clip(&truncated, sampling(0, 1, 80)) else {
            panic!("a truncated file must not decode");
        };
        assert!(matches!(err, VideoError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("truncated.mp4"), "{err}");

        // Overwrite part of the first (key)frame's slice data.
        let mut damaged = source.clone();
        let mdat = source.windows(4).position(|w| w == b"mdat").expect("mdat");
        damaged[mdat + 2000..mdat + 2600].fill(0xff);
        let damaged_path = dir.join("damaged.mp4");
        fs::write(&damaged_path, damaged).expect("write damaged");
        let Err(err) = read_clip(&damaged_path, sampling(0, 1, 4)) else {
            panic!("a damaged bitstream must not decode");
        };
        assert!(matches!(err, VideoError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("H.264 sample 1"), "{err}");

        let audio = dir.join("audio.mp4");
        fs::write(&audio, audio_only_mp4()).expect("write audio-only");
        let Err(err) = read_clip(&audio, sampling(0, 1, 1)) else {
            panic!("an audio-only file has no frames");
        };
        assert!(matches!(err, VideoError::NoVideoTrack { .. }), "{err:?}");
        assert!(err.to_string().contains("no video track"), "{err}");
    }

    /// A valid MP4 holding one AAC track and no video.
    fn audio_only_mp4() -> Vec<u8> {
        let config = Mp4Config {
            major_brand: (*b"isom").into(),
            minor_version: 512,
            compatible_brands: vec![(*b"isom").into()],
            timescale: 1000,
        };
        let track = TrackConfig {
            track_type: TrackType::Audio,
            timescale: 44_100,
            language: "und".to_string(),
            media_conf: MediaConfig::AacConfig(mp4::AacConfig::default()),
        };
        let sample = Mp4Sample {
            start_time: 0,
            duration: 1024,
            rendering_offset: 0,
            is_sync: true,
            bytes: mp4::Bytes::from_static(&[0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c]),
        };
        let mut writer =
            Mp4Writer::write_start(Cursor::new(Vec::new()), &config).expect("start mp4");
        writer.add_track(&track).expect("add track");
        writer.write_sample(1, &sample).expect("write sample");
        writer.write_end().expect("finish mp4");
        writer.into_writer().into_inner()
    }

    #[test]
    fn mp4_round_trip_is_close() {
        let dir = scratch_dir("mp4-round-trip");
        let path = dir.join("nested/out.mp4");
        let clip = synthetic_clip(96, 64, 12);
        write_mp4(&path, &clip).expect("write mp4");
        assert!(no_partial_files(path.parent().expect("parent")));

        let back = read_clip(&path, sampling(0, 1, 12)).expect("read back");
        assert_eq!((back.width, back.height, back.frames.len()), (96, 64, 12));
        assert!((back.fps - 10.0).abs() < 0.01, "fps {}", back.fps);
        for (i, (a, b)) in clip.frames.iter().zip(&back.frames).enumerate() {
            let err = mean_abs_diff(a, b);
            assert!(err < 12.0, "frame {i}: mean abs error {err}");
        }
    }

    #[test]
    fn mp4_writer_pads_odd_sizes_and_marks_keyframes() {
        let dir = scratch_dir("mp4-odd");
        let path = dir.join("odd.mp4");
        write_mp4(&path, &synthetic_clip(63, 47, 25)).expect("write mp4");
        let back = read_clip(&path, sampling(0, 1, 25)).expect("read back");
        assert_eq!((back.width, back.height), (64, 48));

        let file = File::open(&path).expect("open");
        let size = file.metadata().expect("metadata").len();
        let reader = Mp4Reader::read_header(BufReader::new(file), size).expect("parse");
        let track = reader.tracks().get(&1).expect("track 1");
        assert_eq!(
            track.trak.tkhd.flags & 0x3,
            0x3,
            "track enabled and in movie"
        );
        assert_eq!(track.trak.mdia.minf.vmhd.as_ref().map(|v| v.flags), Some(1));
        assert_eq!(reader.moov.mvhd.next_track_id, 2);
        let stss = track.trak.mdia.minf.stbl.stss.as_ref().expect("stss");
        // 10 fps with a keyframe every 2 seconds: samples 1 and 21 are sync samples.
        assert_eq!(stss.entries, vec![1, 21]);
        // Constant frame duration: 10 fps in a 90 kHz timescale.
        assert_eq!(track.timescale(), MP4_TIMESCALE);
        let stts = &track.trak.mdia.minf.stbl.stts.entries;
        assert_eq!(stts.len(), 1);
        assert_eq!((stts[0].sample_count, stts[0].sample_delta), (25, 9000));

        let tiny = dir.join("tiny.mp4");
        let err = write_mp4(&tiny, &synthetic_clip(8, 8, 2)).expect_err("below H.264's minimum");
        assert!(matches!(err, VideoError::InvalidInput { .. }), "{err:?}");
        assert!(!tiny.exists());
        assert!(no_partial_files(&dir));
    }

    #[test]
    fn gif_round_trip() {
        let dir = scratch_dir("gif-round-trip");
        let path = dir.join("out.gif");
        let clip = synthetic_clip(40, 30, 6);
        write_gif(&path, &clip).expect("write gif");
        assert!(no_partial_files(&dir));
        let back = read_clip(&path, sampling(0, 1, 6)).expect("read back");
        assert_eq!((back.width, back.height, back.frames.len()), (40, 30, 6));
        assert!((back.fps - 10.0).abs() < 0.01, "fps {}", back.fps);
        for (i, (a, b)) in clip.frames.iter().zip(&back.frames).enumerate() {
            let err = mean_abs_diff(a, b);
            assert!(err < 10.0, "frame {i}: mean abs error {err}");
        }
        let err = read_clip(&path, sampling(2, 2, 3)).expect_err("6 frames cannot give 3 at 2,4,6");
        assert!(err.to_string().contains("has 6 frames"), "{err}");
    }

    #[test]
    fn png_folder_round_trip() {
        let dir = scratch_dir("png-frames");
        let frames_dir = dir.join("frames");
        write_png_frames(&frames_dir, &synthetic_clip(20, 10, 12)).expect("write 12");
        let clip = synthetic_clip(20, 10, 5);
        write_png_frames(&frames_dir, &clip).expect("write 5 over 12");
        assert!(no_partial_files(&frames_dir));
        assert!(frames_dir.join("frame_0004.png").is_file());
        assert!(
            !frames_dir.join("frame_0005.png").exists(),
            "stale frames removed"
        );

        let back = read_clip(&frames_dir, sampling(1, 2, 2)).expect("read back");
        assert_eq!((back.width, back.height, back.frames.len()), (20, 10, 2));
        assert_eq!(back.frames[0], clip.frames[1], "PNG is lossless");
        assert_eq!(back.frames[1], clip.frames[3]);
    }

    #[test]
    fn write_png_is_atomic_and_checks_sizes() {
        let dir = scratch_dir("png-single");
        let path = dir.join("one.png");
        let err = write_png(&path, 4, 4, &[0; 10]).expect_err("wrong buffer size");
        assert!(matches!(err, VideoError::InvalidInput { .. }), "{err:?}");
        assert!(!path.exists());
        write_png(&path, 2, 1, &[255, 0, 0, 0, 0, 255]).expect("write");
        write_png(&path, 1, 2, &[1, 2, 3, 4, 5, 6]).expect("overwrite");
        assert!(no_partial_files(&dir));
        let image = read_image(&path).expect("read");
        assert_eq!(image.dimensions(), (1, 2));
        assert_eq!(image.into_raw(), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn resize_with_and_without_crop() {
        let clip = synthetic_clip(64, 32, 3);
        let stretched = resize(&clip, 16, 16, false);
        assert_eq!((stretched.width, stretched.height), (16, 16));
        assert!(stretched.frames.iter().all(|f| f.len() == 16 * 16 * 3));
        let cropped = resize(&clip, 16, 16, true);
        assert_eq!(
            (cropped.width, cropped.height, cropped.frames.len()),
            (16, 16, 3)
        );
        assert_ne!(stretched.frames[0], cropped.frames[0]);
        assert_eq!(centered_crop(64, 32, 16, 16), (16, 0, 32, 32));
        assert_eq!(centered_crop(30, 90, 10, 20), (0, 15, 30, 60));
        // A same-size crop-free resize is the identity.
        assert_eq!(resize(&clip, 64, 32, true).frames, clip.frames);
    }

    #[test]
    fn grid_lays_clips_side_by_side() {
        let source = synthetic_clip(40, 20, 4);
        let edit = synthetic_clip(20, 20, 4);
        let out = grid(&[source.clone(), edit, synthetic_clip(30, 10, 4)]);
        // Heights follow the first clip: widths 40, 20, 60 plus two gaps.
        assert_eq!((out.width, out.height), (40 + 20 + 60 + 2 * GRID_GAP, 20));
        assert_eq!(out.frames.len(), 4);
        let row = out.width as usize * 3;
        assert_eq!(&out.frames[0][..40 * 3], &source.frames[0][..40 * 3]);
        assert_eq!(
            &out.frames[0][40 * 3..44 * 3],
            &[255; GRID_GAP as usize * 3][..]
        );
        assert_eq!(out.frames[0].len(), row * 20);
        assert!(grid(&[]).frames.is_empty());
    }

    #[test]
    fn natural_order_sorts_numbers_by_value() {
        let mut names = vec!["f10.png", "f2.png", "f1.png", "f02.png"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, vec!["f1.png", "f2.png", "f02.png", "f10.png"]);
    }

    #[test]
    fn gif_delays_keep_total_duration() {
        let total: u32 = (0..30).map(|i| u32::from(gif_delay(i, 3.0))).sum();
        assert_eq!(total, 1000);
        assert_eq!(gif_delay(0, 10.0), 10);
        assert_eq!(gif_delay(0, 200.0), GIF_MIN_DELAY_CS);
    }
}

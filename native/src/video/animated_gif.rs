//! GIF: reading with full compositing (partial frames, transparency, disposal), and writing
//! looping GIFs with per-frame palettes.

use super::*;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

// --- GIF --------------------------------------------------------------------------------------

pub(super) fn read_gif(path: &Path, sampling: Sampling) -> Result<Clip> {
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
pub(super) fn effective_gif_delay(delay_cs: u16) -> u16 {
    if delay_cs < GIF_MIN_DELAY_CS {
        10
    } else {
        delay_cs
    }
}

/// The composited picture of a GIF: frames may cover only part of the canvas, be partly
/// transparent, and ask for their area to be cleared or restored afterwards.
pub(super) struct GifCanvas {
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
pub(super) fn gif_delay(index: usize, fps: f32) -> u16 {
    let at = |i: usize| (i as f64 * 100.0 / f64::from(fps)).round();
    let delay = (at(index + 1) - at(index)).clamp(0.0, f64::from(u16::MAX)) as u16;
    delay.max(GIF_MIN_DELAY_CS)
}

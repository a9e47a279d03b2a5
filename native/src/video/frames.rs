//! Folders of PNG/JPEG frames: read in natural file-name order, written as
//! `frame_NNNN.png` (each atomically), and single PNG images.

use super::*;
use std::cmp::Ordering;
use std::fs::{self};
use std::path::{Path, PathBuf};

use image::RgbImage;

// --- Image folders ----------------------------------------------------------------------------

pub(super) fn read_frame_dir(dir: &Path, sampling: Sampling) -> Result<Clip> {
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
pub(super) fn list_frame_files(dir: &Path) -> Result<Vec<PathBuf>> {
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
pub(super) fn natural_cmp(a: &str, b: &str) -> Ordering {
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

pub(super) fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

pub(super) fn read_image(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?;
    let image = reader.decode().map_err(|e| corrupt(path, e))?;
    Ok(image.to_rgb8())
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

pub(super) fn frame_file_name(index: usize) -> String {
    format!("frame_{index:04}.png")
}

pub(super) fn remove_stale_frames(dir: &Path, keep: usize) -> Result<()> {
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

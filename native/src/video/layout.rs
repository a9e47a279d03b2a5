//! Resizing clips and laying them out side by side in a grid.

use super::*;

use image::imageops::{self, FilterType};
use image::{ImageBuffer, RgbImage};

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

pub(super) fn resize_frame(
    clip: &Clip,
    frame: &[u8],
    width: u32,
    height: u32,
    center_crop: bool,
) -> Vec<u8> {
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
pub(super) fn frame_image(width: u32, height: u32, frame: &[u8]) -> RgbImage {
    let len = width as usize * height as usize * 3;
    let mut data = frame.get(..len).unwrap_or(frame).to_vec();
    data.resize(len, 0);
    ImageBuffer::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(0, 0))
}

/// The largest centred `(x, y, width, height)` region of a `src_w`×`src_h` frame whose aspect
/// ratio is `dst_w`:`dst_h`.
pub(super) fn centered_crop(
    src_w: u32,
    src_h: u32,
    dst_w: u32,
    dst_h: u32,
) -> (u32, u32, u32, u32) {
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
pub(super) fn scaled_width(clip: &Clip, height: u32) -> u32 {
    if clip.height == 0 {
        return clip.width.max(1);
    }
    let width = (u64::from(clip.width) * u64::from(height) + u64::from(clip.height) / 2)
        / u64::from(clip.height);
    width.clamp(1, u64::from(u32::MAX)) as u32
}

/// Frame `index` of the grid: each clip's frame copied row by row at its column offset.
pub(super) fn grid_frame(clips: &[Clip], index: usize, width: u32, height: u32) -> Vec<u8> {
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

//! Windowed inversion and editing: a clip longer than the UNet should see at once is denoised
//! in windows of `size` frames that overlap by `overlap`, so memory stays that of one window
//! whatever the clip's length.
//!
//! The one new idea: **frame 0 of the whole clip is prepended to every window** as its first
//! frame, so sparse-causal attention (frame i attends to frame 0 and frame i−1) anchors every
//! window on the same frame, and the subject stays the one of the clip's start. The anchor's
//! own prediction is taken from the first window only. Frames in two windows get the average
//! of both windows' noise predictions, weighted by a linear ramp across the overlap, before
//! the DDIM step (which is per frame), so neighbouring windows agree at every step. What it
//! costs: each window runs `size + 1` frames for `size − overlap` new ones.

use std::ops::Range;

use burn::tensor::Tensor;

use crate::edit::{Denoiser, Guidance, guidance_context};
use crate::error::{Result, TavError};
use crate::progress::{Event, Phase, Progress};

/// How a long clip is cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Frames per window (the anchor frame comes on top).
    pub size: usize,
    /// Frames shared by neighbouring windows.
    pub overlap: usize,
}

impl Window {
    /// Windows of `size` frames overlapping by `overlap`, or by default a quarter of the
    /// window (at least 1, less than the window; a 1-frame window is left for
    /// [`Window::check`] to refuse).
    pub fn new(size: usize, overlap: Option<usize>) -> Self {
        Self {
            size,
            overlap: overlap.unwrap_or((size / 4).max(1).min(size.saturating_sub(1))),
        }
    }

    /// Refuses windows that cannot advance: at least 2 frames, overlap below the size.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.size < 2 {
            return Err(format!("a window of {} frames: at least 2", self.size));
        }
        if self.overlap >= self.size {
            return Err(format!(
                "an overlap of {} frames in windows of {}: the overlap must be smaller than the window",
                self.overlap, self.size
            ));
        }
        Ok(())
    }

    /// The windows over `frames` frames: starts `0, size − overlap, …`, the last one moved
    /// back to end at the clip's end. One window when the clip fits in one.
    pub fn ranges(&self, frames: usize) -> Vec<Range<usize>> {
        if frames <= self.size {
            #[allow(clippy::single_range_in_vec_init)] // one window: the whole clip
            return vec![0..frames];
        }
        let advance = self.size - self.overlap;
        let mut ranges = Vec::new();
        let mut start = 0;
        loop {
            if start + self.size >= frames {
                ranges.push(frames - self.size..frames);
                break;
            }
            ranges.push(start..start + self.size);
            start += advance;
        }
        ranges
    }

    /// Blend weights of each frame of `range` (one per frame): 1 inside, a linear ramp over
    /// the frames it shares with the window before or after it.
    fn weights(&self, range: &Range<usize>, frames: usize) -> Vec<f32> {
        let ramp = (self.overlap + 1) as f32;
        range
            .clone()
            .map(|j| {
                let from_start = if range.start == 0 {
                    f32::INFINITY
                } else {
                    (j - range.start + 1) as f32 / ramp
                };
                let from_end = if range.end == frames {
                    f32::INFINITY
                } else {
                    (range.end - j) as f32 / ramp
                };
                from_start.min(from_end).min(1.0)
            })
            .collect()
    }
}

/// A [`Denoiser`] run window by window over the clip.
#[derive(Clone, Copy)]
pub struct WindowedDenoiser<'a> {
    pub denoiser: Denoiser<'a>,
    pub window: Window,
}

impl WindowedDenoiser<'_> {
    /// DDIM inversion of `latents` `[1, C, F, h, w]` as [`Denoiser::invert`], window by
    /// window; returns the inverted latents (the end of the trajectory).
    pub fn invert(
        &self,
        latents: Tensor<5>,
        context: Tensor<3>,
        progress: Progress,
    ) -> Result<Tensor<5>> {
        let d = &self.denoiser;
        let steps = d.ddim.steps();
        let mut x = latents;
        for (i, t) in d.ddim.inversion_timesteps().into_iter().enumerate() {
            let told = d.ddim.inversion_model_timestep(t) as f64;
            let eps = self.predict(&x, |window| {
                d.unet.forward(window, &[told], context.clone(), d.options)
            })?;
            x = d.ddim.inversion_step(eps, t, x);
            progress(Event {
                phase: Phase::Invert,
                step: i + 1,
                total: steps,
                loss: None,
            });
        }
        Ok(x)
    }

    /// Guided DDIM sampling from `latents` as [`Denoiser::sample`], window by window.
    pub fn sample(
        &self,
        latents: Tensor<5>,
        cond: Tensor<3>,
        uncond: Tensor<3>,
        guidance: impl Into<Guidance>,
        progress: Progress,
    ) -> Result<Tensor<5>> {
        let d = &self.denoiser;
        let guidance = guidance.into();
        let context = guidance_context(cond, uncond, guidance.scale);
        let steps = d.ddim.steps();
        let mut x = latents;
        for (i, &t) in d.ddim.timesteps().iter().enumerate() {
            let eps = self.predict(&x, |window| {
                d.guided_prediction(window, t, context.clone(), guidance)
            })?;
            x = d.ddim.step(eps, t, x);
            progress(Event {
                phase: Phase::Sample,
                step: i + 1,
                total: steps,
                loss: None,
            });
        }
        Ok(x)
    }

    /// The whole clip's noise prediction from `predict` run on each window (frame 0
    /// prepended to every window but the first), blended across the overlaps.
    fn predict(
        &self,
        x: &Tensor<5>,
        mut predict: impl FnMut(Tensor<5>) -> Result<Tensor<5>>,
    ) -> Result<Tensor<5>> {
        self.window.check().map_err(TavError::InvalidInput)?;
        let [b, c, f, h, w] = x.dims();
        let device = x.device();
        let mut sum: Option<Tensor<5>> = None;
        let mut total = vec![0f32; f];
        for range in self.window.ranges(f) {
            let frames = x.clone().narrow(2, range.start, range.len());
            let anchored = range.start > 0;
            let input = if anchored {
                Tensor::cat(vec![x.clone().narrow(2, 0, 1), frames], 2)
            } else {
                frames
            };
            let mut eps = predict(input)?;
            if anchored {
                eps = eps.narrow(2, 1, range.len());
            }
            let weights = self.window.weights(&range, f);
            for (j, weight) in range.clone().zip(&weights) {
                total[j] += weight;
            }
            // In the prediction's own dtype (f16 where the UNet computes in f16).
            let weights = Tensor::<1>::from_floats(weights.as_slice(), &device)
                .cast(eps.dtype())
                .reshape([1, 1, range.len(), 1, 1]);
            let sum = sum.get_or_insert_with(|| {
                Tensor::<5>::zeros([b, c, f, h, w], &device).cast(eps.dtype())
            });
            let ranges = [0..b, 0..c, range.clone(), 0..h, 0..w];
            let blended = sum.clone().slice(ranges.clone()) + eps * weights;
            *sum = sum.clone().slice_assign(ranges, blended);
        }
        let sum = sum.expect("at least one window");
        let total = Tensor::<1>::from_floats(total.as_slice(), &device)
            .cast(sum.dtype())
            .reshape([1, 1, f, 1, 1]);
        Ok(sum / total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_clip_and_end_at_its_end() {
        let window = Window {
            size: 16,
            overlap: 4,
        };
        for frames in [1, 15, 16, 17, 40, 64, 65, 640] {
            let ranges = window.ranges(frames);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, frames);
            for pair in ranges.windows(2) {
                // Each window overlaps the one before by at least `overlap` frames.
                assert!(pair[1].start + window.overlap <= pair[0].end, "{ranges:?}");
                assert!(pair[1].start > pair[0].start);
            }
            assert!(ranges.iter().all(|r| r.len() == frames.min(16)));
        }
        // 64 frames in windows of 16 advancing 12: starts 0, 12, 24, 36, then 48 (to the end).
        let starts: Vec<usize> = window.ranges(64).iter().map(|r| r.start).collect();
        assert_eq!(starts, [0, 12, 24, 36, 48]);
    }

    #[test]
    fn blend_weights_ramp_over_the_overlap_and_sum_to_one_inside() {
        let window = Window {
            size: 8,
            overlap: 3,
        };
        let frames = 20;
        let mut total = vec![0f32; frames];
        for range in window.ranges(frames) {
            for (j, w) in range.clone().zip(window.weights(&range, frames)) {
                assert!(w > 0.0 && w <= 1.0);
                total[j] += w;
            }
        }
        // Every frame is covered; where two windows overlap their ramps share the frame.
        assert!(total.iter().all(|&t| t > 0.0), "{total:?}");
        assert_eq!(total[0], 1.0);
        assert_eq!(total[frames - 1], 1.0);
    }

    #[test]
    fn a_window_that_cannot_advance_is_refused() {
        assert!(
            Window {
                size: 1,
                overlap: 0
            }
            .check()
            .is_err()
        );
        assert!(
            Window {
                size: 8,
                overlap: 8
            }
            .check()
            .is_err()
        );
        assert!(
            Window {
                size: 8,
                overlap: 2
            }
            .check()
            .is_ok()
        );
    }
}

//! Scoring an edit of a toy-world clip from its pixels alone: which colour, shape and
//! background it shows, whether the object kept the source's motion, and how much the video
//! flickers. Nothing here looks at the model: an edited video is judged as a viewer would.

use crate::toyworld::{Background, Colour, Shape, hsv};

/// What one video shows, read from its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The object's pixels per frame.
    pub masks: Vec<Vec<bool>>,
    /// The object's centroid per frame (`None` where no object is seen), in pixels.
    pub centroids: Vec<Option<[f32; 2]>>,
    /// The object's colour (nearest in hue), if any object is seen.
    pub colour: Option<Colour>,
    /// The shape most frames show, by moments.
    pub shape: Option<Shape>,
    /// The background (nearest mean colour of the non-object pixels).
    pub background: Background,
    /// Mean absolute change between consecutive frames, in [0, 1].
    pub frame_change: f32,
    /// How far the object's colour drifts from the first frame it is seen in, in [0, 1].
    pub colour_drift: f32,
}

/// Frames smaller than this share of object pixels are taken as showing no object.
const MIN_OBJECT_SHARE: f32 = 0.005;

/// Whether a pixel belongs to the object: saturated, not dark, and not green (the
/// toy world's objects are never green; grass is). Every background is greyer than this.
pub fn is_object(rgb: [f32; 3]) -> bool {
    let [hue, saturation, value] = hsv(rgb);
    saturation > 0.5 && value > 0.3 && !(70.0..=165.0).contains(&hue)
}

/// Reads `frames` (RGB8, `size × size` each).
pub fn analyse(frames: &[Vec<u8>], size: usize) -> Analysis {
    let masks: Vec<Vec<bool>> = frames
        .iter()
        .map(|f| f.chunks_exact(3).map(|p| is_object(unit(p))).collect())
        .collect();
    // Whole pixels: the share of the frame, rounded down, at least one.
    let min_pixels = (MIN_OBJECT_SHARE * (size * size) as f32).max(1.0).floor();
    // Per frame, the object's moments where it is seen (enough pixels), else `None`.
    let moments: Vec<Option<Moments>> = masks
        .iter()
        .map(|m| Moments::of(m, size).filter(|mo| mo.count >= min_pixels))
        .collect();
    let shown: Vec<bool> = moments.iter().map(Option::is_some).collect();
    Analysis {
        colour: object_colour(frames, &masks),
        shape: majority(moments.iter().flatten().map(Moments::shape)),
        background: background_of(frames, &masks),
        frame_change: frame_change(frames),
        colour_drift: colour_drift(frames, &masks, &shown),
        centroids: moments
            .iter()
            .map(|mo| mo.map(|mo| [mo.cx, mo.cy]))
            .collect(),
        masks,
    }
}

fn unit(p: &[u8]) -> [f32; 3] {
    [p[0], p[1], p[2]].map(|c| c as f32 / 255.0)
}

/// The nearest toy colour to the circular mean hue of the object's pixels.
fn object_colour(frames: &[Vec<u8>], masks: &[Vec<bool>]) -> Option<Colour> {
    let (mut s, mut c, mut n) = (0f64, 0f64, 0usize);
    for (frame, mask) in frames.iter().zip(masks) {
        for (p, _) in frame.chunks_exact(3).zip(mask).filter(|(_, on)| **on) {
            let hue = (hsv(unit(p))[0] as f64).to_radians();
            s += hue.sin();
            c += hue.cos();
            n += 1;
        }
    }
    if n == 0 {
        return None;
    }
    let mean = s.atan2(c).to_degrees().rem_euclid(360.0) as f32;
    Colour::ALL
        .into_iter()
        .min_by(|a, b| hue_distance(a.hue(), mean).total_cmp(&hue_distance(b.hue(), mean)))
}

fn hue_distance(a: f32, b: f32) -> f32 {
    let d = (a - b).rem_euclid(360.0);
    d.min(360.0 - d)
}

/// The background whose mean colour is nearest to that of the non-object pixels.
fn background_of(frames: &[Vec<u8>], masks: &[Vec<bool>]) -> Background {
    let mean = mean_rgb(frames.iter().zip(masks).flat_map(|(frame, mask)| {
        frame
            .chunks_exact(3)
            .zip(mask)
            .filter(|(_, on)| !**on)
            .map(|(p, _)| p)
    }));
    let distance = |b: &Background| {
        let proto = b.mean_colour();
        (0..3).map(|i| (proto[i] - mean[i]).powi(2)).sum::<f32>()
    };
    Background::ALL
        .into_iter()
        .min_by(|a, b| distance(a).total_cmp(&distance(b)))
        .expect("four backgrounds")
}

/// Mean over the frames after the first that shows the object (of those `shown`) of the
/// mean absolute difference between the object's mean colour there and in that first one,
/// in [0, 1]. This is the appearance sparse-causal attention holds to frame 0; whether the
/// object is there at all is the motion scores' part, so frames without it are left out,
/// but an object seen in fewer than two frames drifts 1.
fn colour_drift(frames: &[Vec<u8>], masks: &[Vec<bool>], shown: &[bool]) -> f32 {
    let colours: Vec<[f32; 3]> = frames
        .iter()
        .zip(masks)
        .zip(shown)
        .filter(|(_, shown)| **shown)
        .map(|((frame, mask), _)| mean_colour(frame, mask))
        .collect();
    let Some((first, rest)) = colours.split_first().filter(|(_, rest)| !rest.is_empty()) else {
        return 1.0;
    };
    let distance = |c: &[f32; 3]| (0..3).map(|i| (c[i] - first[i]).abs()).sum::<f32>() / 3.0;
    rest.iter().map(distance).sum::<f32>() / rest.len() as f32
}

/// The mean colour of a frame's pixels under `mask`, in [0, 1].
fn mean_colour(frame: &[u8], mask: &[bool]) -> [f32; 3] {
    mean_rgb(
        frame
            .chunks_exact(3)
            .zip(mask)
            .filter(|(_, on)| **on)
            .map(|(p, _)| p),
    )
}

/// The mean of RGB8 pixels, in [0, 1] (black when there are none).
fn mean_rgb<'a>(pixels: impl Iterator<Item = &'a [u8]>) -> [f32; 3] {
    let mut sum = [0f64; 3];
    let mut n = 0usize;
    for p in pixels {
        for (s, v) in sum.iter_mut().zip(unit(p)) {
            *s += v as f64;
        }
        n += 1;
    }
    sum.map(|s| (s / n.max(1) as f64) as f32)
}

/// Mean absolute difference between consecutive frames, in [0, 1].
pub fn frame_change(frames: &[Vec<u8>]) -> f32 {
    if frames.len() < 2 {
        return 0.0;
    }
    let total: f64 = frames
        .windows(2)
        .map(|w| {
            let sum: u64 = w[0]
                .iter()
                .zip(&w[1])
                .map(|(a, b)| a.abs_diff(*b) as u64)
                .sum();
            sum as f64 / (w[0].len() as f64 * 255.0)
        })
        .sum();
    (total / (frames.len() - 1) as f64) as f32
}

/// How much the background changes between consecutive frames once the camera's pan is
/// undone, in [0, 1]: frame f's pixel x against frame f − 1's at x + `shift` pixels (linearly
/// interpolated), over pixels where neither shows the object (`masks`) and the shift stays in
/// the frame. 0 for a background that moves exactly with the camera; a background that
/// flickers, or stands still while the camera pans, scores higher. With `shift` 0 it is the
/// background's frame-to-frame change. Frames with no background to compare count 1.
pub fn background_change(frames: &[Vec<u8>], masks: &[Vec<bool>], size: usize, shift: f32) -> f32 {
    if frames.len() < 2 {
        return 0.0;
    }
    let mut total = 0f64;
    for f in 1..frames.len() {
        let (now, before) = (&frames[f], &frames[f - 1]);
        let (mut sum, mut count) = (0f64, 0usize);
        for y in 0..size {
            for x in 0..size {
                let from = x as f32 + shift;
                if from < 0.0 || from > (size - 1) as f32 {
                    continue;
                }
                let x0 = from.floor() as usize;
                let x1 = (x0 + 1).min(size - 1);
                let weight = from - x0 as f32;
                let (i, i0, i1) = (y * size + x, y * size + x0, y * size + x1);
                if masks[f][i] || masks[f - 1][i0] || masks[f - 1][i1] {
                    continue;
                }
                for c in 0..3 {
                    let was = before[i0 * 3 + c] as f32 * (1.0 - weight)
                        + before[i1 * 3 + c] as f32 * weight;
                    sum += ((now[i * 3 + c] as f32 - was).abs() / 255.0) as f64;
                }
                count += 3;
            }
        }
        total += if count == 0 { 1.0 } else { sum / count as f64 };
    }
    (total / (frames.len() - 1) as f64) as f32
}

fn majority<T: PartialEq + Copy>(items: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for item in items {
        match counts.iter_mut().find(|(t, _)| *t == item) {
            Some((_, n)) => *n += 1,
            None => counts.push((item, 1)),
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(t, _)| t)
}

/// Area, centroid and the central moments that tell the shapes apart.
#[derive(Debug, Clone, Copy)]
struct Moments {
    count: f32,
    cx: f32,
    cy: f32,
    /// Central moments, each divided by the area.
    mu02: f32,
    mu03: f32,
    mu40: f32,
    mu04: f32,
    mu22: f32,
}

impl Moments {
    fn of(mask: &[bool], size: usize) -> Option<Self> {
        let points: Vec<(f32, f32)> = mask
            .iter()
            .enumerate()
            .filter(|(_, on)| **on)
            .map(|(i, _)| ((i % size) as f32 + 0.5, (i / size) as f32 + 0.5))
            .collect();
        if points.is_empty() {
            return None;
        }
        let count = points.len() as f32;
        let cx = points.iter().map(|p| p.0).sum::<f32>() / count;
        let cy = points.iter().map(|p| p.1).sum::<f32>() / count;
        let mean = |f: &dyn Fn(f32, f32) -> f32| {
            points.iter().map(|&(x, y)| f(x - cx, y - cy)).sum::<f32>() / count
        };
        Some(Self {
            count,
            cx,
            cy,
            mu02: mean(&|_, y| y * y),
            mu03: mean(&|_, y| y * y * y),
            mu40: mean(&|x, _| x.powi(4)),
            mu04: mean(&|_, y| y.powi(4)),
            mu22: mean(&|x, y| x * x * y * y),
        })
    }

    /// Upright triangles are skewed along y (skewness ±0.57; circles and squares 0). Of the
    /// symmetric two, an axis-aligned square has μ22/(μ40+μ04) = 0.28, a disc 0.17.
    fn shape(&self) -> Shape {
        let skew = self.mu03 / self.mu02.max(f32::EPSILON).powf(1.5);
        if skew.abs() > 0.3 {
            Shape::Triangle
        } else if self.mu22 / (self.mu40 + self.mu04).max(f32::EPSILON) > 0.222 {
            Shape::Square
        } else {
            Shape::Circle
        }
    }
}

/// How an edit kept the source's motion: per-frame mask IoU and centroid distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionKept {
    /// Mean over frames of the IoU of the object masks.
    pub mean_iou: f32,
    /// Mean over frames of the distance between centroids, in frame widths (a frame where
    /// either shows no object counts as a distance of 1).
    pub centroid_error: f32,
}

/// The edit's object path against the source's.
pub fn motion_kept(source: &Analysis, edit: &Analysis, size: usize) -> MotionKept {
    let frames = source.masks.len().min(edit.masks.len()).max(1);
    let mean_iou = source
        .masks
        .iter()
        .zip(&edit.masks)
        .map(|(a, b)| iou(a, b))
        .sum::<f32>()
        / frames as f32;
    let centroid_error = source
        .centroids
        .iter()
        .zip(&edit.centroids)
        .map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => {
                ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt() / size as f32
            }
            _ => 1.0,
        })
        .sum::<f32>()
        / frames as f32;
    MotionKept {
        mean_iou,
        centroid_error,
    }
}

/// Intersection over union of two masks (1 when both are empty).
pub fn iou(a: &[bool], b: &[bool]) -> f32 {
    let (mut both, mut either) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        both += (x && y) as usize;
        either += (x || y) as usize;
    }
    if either == 0 {
        1.0
    } else {
        both as f32 / either as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toyworld::{ClipSpec, Path, render};

    /// Every generated clip is read back as what it was drawn as, and its object found.
    #[test]
    fn generated_clips_are_read_as_drawn() {
        let mut wrong = Vec::new();
        let mut ious = Vec::new();
        for (i, &shape) in Shape::ALL.iter().enumerate() {
            for (j, &colour) in Colour::ALL.iter().enumerate() {
                for (k, &background) in Background::ALL.iter().enumerate() {
                    let spec = ClipSpec {
                        shape,
                        colour,
                        background,
                        path: Path::ALL[(i + j + k) % Path::ALL.len()],
                        frames: 4,
                        size: 64,
                        seed: (i * 100 + j * 10 + k) as u64,
                        pan: 0.25 * (k % 2) as f32,
                    };
                    let clip = render(&spec);
                    let seen = analyse(&clip.frames, spec.size);
                    if seen.colour != Some(colour)
                        || seen.shape != Some(shape)
                        || seen.background != background
                    {
                        wrong.push(format!(
                            "{}: read {:?} {:?} {:?}",
                            spec.caption(),
                            seen.colour,
                            seen.shape,
                            seen.background
                        ));
                    }
                    ious.extend(clip.masks.iter().zip(&seen.masks).map(|(a, b)| iou(a, b)));
                }
            }
        }
        let worst = ious.iter().cloned().fold(1.0, f32::min);
        assert!(wrong.is_empty(), "misread clips:\n{}", wrong.join("\n"));
        assert!(worst > 0.95, "object masks found with IoU down to {worst}");
    }

    #[test]
    fn moved_objects_lose_iou_and_gain_centroid_error() {
        let spec = ClipSpec::random(5, 6, 64);
        let other = ClipSpec {
            path: if spec.path == Path::TopToBottom {
                Path::LeftToRight
            } else {
                Path::TopToBottom
            },
            ..spec
        };
        let source = analyse(&render(&spec).frames, 64);
        let same = motion_kept(&source, &source, 64);
        assert_eq!(same.mean_iou, 1.0);
        assert_eq!(same.centroid_error, 0.0);
        let moved = motion_kept(&source, &analyse(&render(&other).frames, 64), 64);
        assert!(moved.mean_iou < 0.7, "{moved:?}");
        assert!(moved.centroid_error > 0.05, "{moved:?}");
    }

    /// A generated clip keeps its object's colour; recolouring later frames is drift, and
    /// an object that is never seen twice drifts fully.
    #[test]
    fn recoloured_frames_drift_and_generated_ones_do_not() {
        // Red, so swapping red and blue makes it blue.
        let spec = ClipSpec {
            colour: Colour::Red,
            ..ClipSpec::random(3, 6, 64)
        };
        let clip = render(&spec);
        let seen = analyse(&clip.frames, 64);
        assert!(seen.colour_drift < 0.02, "{}", seen.colour_drift);
        let mut recoloured = clip.frames.clone();
        for (frame, mask) in recoloured.iter_mut().zip(&clip.masks).skip(3) {
            for (p, _) in frame.chunks_exact_mut(3).zip(mask).filter(|(_, on)| **on) {
                p.swap(0, 2);
            }
        }
        let drifted = analyse(&recoloured, 64).colour_drift;
        assert!(drifted > seen.colour_drift + 0.05, "{drifted}");
        let empty = vec![vec![128u8; 64 * 64 * 3]; 4];
        assert_eq!(analyse(&empty, 64).colour_drift, 1.0);
    }

    /// A panned clip's background follows the camera: little change once the pan is undone,
    /// much more if it is not undone, or if the background stands still while the camera
    /// pans, or flickers.
    #[test]
    fn a_background_that_follows_the_pan_changes_least() {
        let spec = ClipSpec {
            pan: 0.5,
            ..ClipSpec::random(21, 8, 64)
        };
        let shift = spec.pan_per_frame();
        let clip = render(&spec);
        let seen = analyse(&clip.frames, 64);
        let follows = background_change(&clip.frames, &seen.masks, 64, shift);
        let not_undone = background_change(&clip.frames, &seen.masks, 64, 0.0);
        let still = render(&ClipSpec { pan: 0.0, ..spec });
        let still_seen = analyse(&still.frames, 64);
        let stands_still = background_change(&still.frames, &still_seen.masks, 64, shift);
        let mut flicker = clip.frames.clone();
        let mut rng = crate::draws::SeededRng::new(2);
        for frame in flicker.iter_mut().skip(1).step_by(2) {
            frame
                .iter_mut()
                .for_each(|v| *v = v.saturating_add((rng.next_u64() % 40) as u8));
        }
        let flickers = background_change(&flicker, &seen.masks, 64, shift);
        println!(
            "background change: follows {follows:.4}, pan not undone {not_undone:.4}, \
             stands still {stands_still:.4}, flickers {flickers:.4}"
        );
        assert!(follows < 0.02, "{follows}");
        for worse in [not_undone, stands_still, flickers] {
            assert!(worse > 2.0 * follows, "{worse} against {follows}");
        }
        // A still clip, measured as still, does not change at all.
        assert_eq!(
            background_change(&still.frames, &still_seen.masks, 64, 0.0),
            0.0
        );
    }

    #[test]
    fn a_still_clip_has_no_frame_change_and_noise_has_much() {
        let still = vec![vec![100u8; 64 * 64 * 3]; 3];
        assert_eq!(frame_change(&still), 0.0);
        let mut rng = crate::draws::SeededRng::new(1);
        let noise: Vec<Vec<u8>> = (0..3)
            .map(|_| (0..64 * 64 * 3).map(|_| rng.next_u64() as u8).collect())
            .collect();
        assert!(frame_change(&noise) > 0.25);
    }
}

//! A toy world where edits can be seen and scored: procedural clips of one coloured shape
//! moving over a textured background, each with a caption in the reference's style ("a red
//! circle is moving on the road"). Everything is drawn from a seed, so a clip is reproduced
//! exactly from its spec; the drawing also yields the object's mask and centroid per frame,
//! which is the ground truth that scoring (`score.rs`) is checked against.

use crate::draws::SeededRng;

/// The object's outline. Squares and triangles stay upright, so moments tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

/// Saturated object colours, none of them green (grass is) and none as grey as road or snow,
/// so a pixel's hue and saturation separate object from background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Blue,
    Purple,
    Pink,
}

/// Textured backgrounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Background {
    Road,
    Beach,
    Snow,
    Grass,
}

/// How the object moves across the clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Path {
    LeftToRight,
    RightToLeft,
    TopToBottom,
    Diagonal,
    Arc,
    Bounce,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

impl Colour {
    pub const ALL: [Colour; 6] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
        }
    }

    pub fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [0.86, 0.10, 0.10],
            Colour::Orange => [0.95, 0.50, 0.05],
            Colour::Yellow => [0.95, 0.88, 0.08],
            Colour::Blue => [0.10, 0.25, 0.90],
            Colour::Purple => [0.55, 0.12, 0.80],
            Colour::Pink => [0.95, 0.25, 0.65],
        }
    }

    /// Hue in degrees, as `rgb` draws it.
    pub fn hue(self) -> f32 {
        hsv(self.rgb())[0]
    }
}

impl Background {
    pub const ALL: [Background; 4] = [
        Background::Road,
        Background::Beach,
        Background::Snow,
        Background::Grass,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Background::Road => "road",
            Background::Beach => "beach",
            Background::Snow => "snow",
            Background::Grass => "grass",
        }
    }

    /// The texture's base colour.
    fn base(self) -> [f32; 3] {
        match self {
            Background::Road => [0.30, 0.30, 0.32],
            Background::Beach => [0.78, 0.71, 0.53],
            Background::Snow => [0.90, 0.92, 0.96],
            Background::Grass => [0.25, 0.50, 0.18],
        }
    }
}

impl Background {
    /// The mean colour of the drawn texture: what a background is classified by.
    pub fn mean_colour(self) -> [f32; 3] {
        static MEANS: std::sync::OnceLock<Vec<[f32; 3]>> = std::sync::OnceLock::new();
        let means = MEANS.get_or_init(|| {
            Background::ALL
                .iter()
                .map(|&b| {
                    let pixels = texture(b, 64, 0, 0.0);
                    let mut sum = [0f32; 3];
                    for p in &pixels {
                        for c in 0..3 {
                            sum[c] += p[c].clamp(0.0, 1.0);
                        }
                    }
                    sum.map(|s| s / pixels.len() as f32)
                })
                .collect()
        });
        means[self as usize]
    }
}

impl Path {
    pub const ALL: [Path; 6] = [
        Path::LeftToRight,
        Path::RightToLeft,
        Path::TopToBottom,
        Path::Diagonal,
        Path::Arc,
        Path::Bounce,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Path::LeftToRight => "left-to-right",
            Path::RightToLeft => "right-to-left",
            Path::TopToBottom => "top-to-bottom",
            Path::Diagonal => "diagonal",
            Path::Arc => "arc",
            Path::Bounce => "bounce",
        }
    }

    /// The object's centre at time `t` in [0, 1], in units of the frame size.
    fn centre(self, t: f32) -> [f32; 2] {
        let lerp = |a: f32, b: f32| a + (b - a) * t;
        match self {
            Path::LeftToRight => [lerp(0.22, 0.78), 0.58],
            Path::RightToLeft => [lerp(0.78, 0.22), 0.55],
            Path::TopToBottom => [0.5, lerp(0.25, 0.75)],
            Path::Diagonal => [lerp(0.25, 0.75), lerp(0.28, 0.72)],
            Path::Arc => {
                let angle = std::f32::consts::PI * (1.0 - t);
                [0.5 + 0.28 * angle.cos(), 0.65 - 0.3 * angle.sin()]
            }
            Path::Bounce => [
                lerp(0.22, 0.78),
                0.72 - 0.4 * (std::f32::consts::PI * 2.0 * t).sin().abs(),
            ],
        }
    }
}

/// Everything that decides a clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSpec {
    pub shape: Shape,
    pub colour: Colour,
    pub background: Background,
    pub path: Path,
    pub frames: usize,
    /// Width and height in pixels.
    pub size: usize,
    /// Texture and jitter.
    pub seed: u64,
    /// Camera pan: the background slides left by this share of the frame's width over the
    /// clip (0: a still camera, as `random` draws). Frames then differ in every pixel, not
    /// only where the object is.
    pub pan: f32,
}

impl ClipSpec {
    /// A spec drawn at random from the world (every attribute uniform), from `seed`.
    pub fn random(seed: u64, frames: usize, size: usize) -> Self {
        let mut rng = SeededRng::for_stream(seed, "toyworld.spec");
        let pick = |rng: &mut SeededRng, n: usize| (rng.next_u64() % n as u64) as usize;
        Self {
            shape: Shape::ALL[pick(&mut rng, Shape::ALL.len())],
            colour: Colour::ALL[pick(&mut rng, Colour::ALL.len())],
            background: Background::ALL[pick(&mut rng, Background::ALL.len())],
            path: Path::ALL[pick(&mut rng, Path::ALL.len())],
            frames,
            size,
            seed,
            pan: 0.0,
        }
    }

    /// How far the background slides between consecutive frames, in pixels (0 for one frame).
    pub fn pan_per_frame(&self) -> f32 {
        if self.frames < 2 {
            return 0.0;
        }
        self.pan * self.size as f32 / (self.frames - 1) as f32
    }

    /// The reference's caption style.
    pub fn caption(&self) -> String {
        caption(self.colour, self.shape, self.background)
    }
}

/// "a red circle is moving on the road" ("an orange …").
pub fn caption(colour: Colour, shape: Shape, background: Background) -> String {
    let article = if colour.name().starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!(
        "{article} {} {} is moving on the {}",
        colour.name(),
        shape.name(),
        background.name()
    )
}

/// A drawn clip and its ground truth.
#[derive(Debug, Clone)]
pub struct ToyClip {
    pub spec: ClipSpec,
    /// RGB8 frames, `size × size × 3` bytes each, row-major.
    pub frames: Vec<Vec<u8>>,
    /// The object's pixels per frame (row-major, `size × size`).
    pub masks: Vec<Vec<bool>>,
}

/// Draws the clip `spec` describes.
pub fn render(spec: &ClipSpec) -> ToyClip {
    let n = spec.size;
    let still = texture(spec.background, n, spec.seed, 0.0);
    let radius = 0.15 * n as f32;
    let mut frames = Vec::with_capacity(spec.frames);
    let mut masks = Vec::with_capacity(spec.frames);
    for f in 0..spec.frames {
        let t = if spec.frames > 1 {
            f as f32 / (spec.frames - 1) as f32
        } else {
            0.5
        };
        let panned;
        let background = if spec.pan == 0.0 {
            &still
        } else {
            panned = texture(spec.background, n, spec.seed, spec.pan * t);
            &panned
        };
        let [cx, cy] = spec.path.centre(t);
        let (cx, cy) = (cx * n as f32, cy * n as f32);
        let mask: Vec<bool> = (0..n * n)
            .map(|i| {
                let (x, y) = ((i % n) as f32 + 0.5, (i / n) as f32 + 0.5);
                inside(spec.shape, x - cx, y - cy, radius)
            })
            .collect();
        let colour = spec.colour.rgb();
        let mut frame = Vec::with_capacity(n * n * 3);
        for (i, &on) in mask.iter().enumerate() {
            // A little shading keeps the object from being a flat cut-out.
            let rgb = if on {
                let shade = 0.92 + 0.08 * ((i / n) as f32 / n as f32);
                colour.map(|c| c * shade)
            } else {
                background[i]
            };
            frame.extend(rgb.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8));
        }
        frames.push(frame);
        masks.push(mask);
    }
    ToyClip {
        spec: *spec,
        frames,
        masks,
    }
}

/// Whether the point (`dx`, `dy`) from the centre is inside the shape of size `r`. The three
/// shapes have about the same area, so size does not give the shape away.
fn inside(shape: Shape, dx: f32, dy: f32, r: f32) -> bool {
    match shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => {
            let half = r * std::f32::consts::PI.sqrt() / 2.0;
            dx.abs() <= half && dy.abs() <= half
        }
        Shape::Triangle => {
            // Upright equilateral triangle of the circle's area, centred on its centroid.
            let side = r * (4.0 * std::f32::consts::PI / 3f32.sqrt()).sqrt();
            let height = side * 3f32.sqrt() / 2.0;
            let (top, bottom) = (-2.0 * height / 3.0, height / 3.0);
            if dy < top || dy > bottom {
                return false;
            }
            let half_width = (dy - top) / height * side / 2.0;
            dx.abs() <= half_width
        }
    }
}

/// The background's texture, `n × n` RGB in [0, 1], seen from `shift` frame widths to the
/// right of the origin.
fn texture(background: Background, n: usize, seed: u64, shift: f32) -> Vec<[f32; 3]> {
    let noise = ValueNoise::new(SeededRng::for_stream(seed, background.name()));
    let fine = ValueNoise::new(SeededRng::for_stream(seed, "fine"));
    (0..n * n)
        .map(|i| {
            let (x, y) = ((i % n) as f32 / n as f32 + shift, (i / n) as f32 / n as f32);
            let coarse = noise.at(x * 4.0, y * 4.0) - 0.5;
            let grain = fine.at(x * 24.0, y * 24.0) - 0.5;
            let base = background.base();
            match background {
                Background::Road => {
                    // Asphalt with a dashed centre line across the frame.
                    let line = (y - 0.5).abs() < 0.02 && (x * 6.0).fract() < 0.55;
                    if line {
                        [0.92, 0.9, 0.8]
                    } else {
                        base.map(|c| c + 0.10 * grain + 0.04 * coarse)
                    }
                }
                Background::Beach => {
                    // Sand below, a grey-green sea with wave lines above.
                    let shore = 0.28 + 0.04 * (x * 9.0 + coarse * 3.0).sin();
                    if y < shore {
                        let wave = 0.06 * ((y * 60.0 + coarse * 8.0).sin() > 0.85) as u8 as f32;
                        [0.45 + wave, 0.62 + wave, 0.66 + wave]
                    } else {
                        base.map(|c| c + 0.08 * grain + 0.05 * coarse)
                    }
                }
                Background::Snow => {
                    // Soft drifts with blue shadows and sparkle.
                    let drift = 0.06 * coarse;
                    let sparkle = if grain > 0.45 { 0.05 } else { 0.0 };
                    [
                        base[0] + drift + sparkle - 0.04 * y,
                        base[1] + drift + sparkle - 0.03 * y,
                        base[2] + drift + sparkle,
                    ]
                }
                Background::Grass => {
                    // Blades: vertical streaks of lighter and darker green.
                    let blade = fine.at(x * 48.0, y * 8.0) - 0.5;
                    [
                        base[0] + 0.06 * blade + 0.03 * coarse,
                        base[1] + 0.16 * blade + 0.06 * coarse,
                        base[2] + 0.05 * blade,
                    ]
                }
            }
        })
        .collect()
}

/// Smooth value noise on a 64×64 lattice (wrapping), in [0, 1].
struct ValueNoise {
    lattice: Vec<f32>,
}

impl ValueNoise {
    const SIZE: usize = 64;

    fn new(mut rng: SeededRng) -> Self {
        Self {
            lattice: (0..Self::SIZE * Self::SIZE)
                .map(|_| rng.uniform() as f32)
                .collect(),
        }
    }

    fn at(&self, x: f32, y: f32) -> f32 {
        let s = Self::SIZE;
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (smooth(x - x0), smooth(y - y0));
        let (ix, iy) = (x0 as usize % s, y0 as usize % s);
        let v = |dx: usize, dy: usize| self.lattice[((iy + dy) % s) * s + (ix + dx) % s];
        let top = v(0, 0) + (v(1, 0) - v(0, 0)) * fx;
        let bottom = v(0, 1) + (v(1, 1) - v(0, 1)) * fx;
        top + (bottom - top) * fy
    }
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Hue (degrees), saturation and value of an RGB colour in [0, 1].
pub fn hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let hue = if delta <= f32::EPSILON {
        0.0
    } else if max == r {
        60.0 * ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / delta + 2.0)
    } else {
        60.0 * ((r - g) / delta + 4.0)
    };
    let saturation = if max <= f32::EPSILON {
        0.0
    } else {
        delta / max
    };
    [hue, saturation, max]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panned clip's background is the still one slid left: 0.25 of a 64-pixel frame over
    /// a 2-frame clip is 16 pixels by the last frame, and the first frame is unmoved.
    #[test]
    fn a_panned_background_slides_left_by_the_pan() {
        let still = ClipSpec {
            background: Background::Road,
            ..ClipSpec::random(11, 2, 64)
        };
        let panned = ClipSpec { pan: 0.25, ..still };
        let (a, b) = (render(&still), render(&panned));
        assert_eq!(a.frames[0], b.frames[0]);
        let (n, shift) = (64, 16);
        fn background(clip: &ToyClip, f: usize, x: usize, y: usize) -> Option<&[u8]> {
            let i = y * 64 + x;
            (!clip.masks[f][i]).then(|| &clip.frames[f][i * 3..i * 3 + 3])
        }
        let (mut same, mut compared) = (0, 0);
        for y in 0..n {
            for x in 0..n - shift {
                if let (Some(moved), Some(origin)) =
                    (background(&b, 1, x, y), background(&a, 1, x + shift, y))
                {
                    compared += 1;
                    same += (moved == origin) as usize;
                }
            }
        }
        assert!(compared > 2000, "{compared}");
        assert!(same * 100 >= compared * 99, "{same} of {compared}");
        assert_ne!(a.frames[1], b.frames[1]);
        assert_eq!(panned.pan_per_frame(), shift as f32);
    }
}

//! The loss curve, drawn as a small PNG beside the outputs (no plotting library needed).

/// An RGB image of `losses` (one per step) with a light grid; `None` if there is nothing to
/// draw.
pub fn loss_curve(losses: &[f32], width: u32, height: u32) -> Option<Vec<u8>> {
    let finite: Vec<f32> = losses.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    let (w, h) = (width as usize, height as usize);
    let mut img = vec![255u8; w * h * 3];
    let margin = 10usize;
    let (lo, hi) = finite
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut put = |x: usize, y: usize, rgb: [u8; 3]| {
        if x < w && y < h {
            img[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&rgb);
        }
    };
    for i in 0..=4 {
        let y = margin + i * (h - 2 * margin) / 4;
        for x in margin..w - margin {
            put(x, y, [225, 225, 225]);
        }
    }
    let n = losses.len().max(2);
    let to_xy = |i: usize, v: f32| {
        let x = margin + i * (w - 2 * margin - 1) / (n - 1);
        let y = margin + (((hi - v) / span) * (h - 2 * margin - 1) as f32) as usize;
        (x, y)
    };
    let mut previous = None;
    for (i, &v) in losses.iter().enumerate() {
        if !v.is_finite() {
            previous = None;
            continue;
        }
        let (x, y) = to_xy(i, v);
        if let Some((px, py)) = previous {
            let steps = (x as i64 - px as i64)
                .abs()
                .max((y as i64 - py as i64).abs())
                .max(1);
            for s in 0..=steps {
                let xi = px as i64 + (x as i64 - px as i64) * s / steps;
                let yi = py as i64 + (y as i64 - py as i64) * s / steps;
                put(xi as usize, yi as usize, [200, 40, 40]);
            }
        } else {
            put(x, y, [200, 40, 40]);
        }
        previous = Some((x, y));
    }
    Some(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_marks_pixels_and_handles_empty() {
        assert!(loss_curve(&[], 64, 32).is_none());
        let img = loss_curve(&[1.0, 0.5, 0.25, f32::NAN, 0.2], 64, 32).unwrap();
        let red = img.chunks(3).filter(|p| p == &[200, 40, 40]).count();
        assert!(red > 20, "the curve is drawn ({red} pixels)");
    }
}

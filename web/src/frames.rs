//! Frames as the page has them (RGBA bytes, frame after frame) to the model's pixels and
//! back.

use burn::tensor::{Device, Tensor, TensorData};

/// The size of a clip handed in by JavaScript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    pub count: usize,
    pub width: usize,
    pub height: usize,
}

impl FrameSize {
    /// Checks the size and the byte count of `rgba`; the message says what is wrong.
    pub fn check(&self, rgba_len: usize) -> Result<(), String> {
        if self.count == 0 {
            return Err("bad frames: the clip has no frames".into());
        }
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || !v.is_multiple_of(64) {
                return Err(format!(
                    "bad frames: {name} {v} is not a positive multiple of 64 (resize the frames first)"
                ));
            }
        }
        let expected = self.count * self.width * self.height * 4;
        if rgba_len != expected {
            return Err(format!(
                "bad frames: {} frames of {}×{} RGBA are {expected} bytes, got {rgba_len}",
                self.count, self.width, self.height
            ));
        }
        Ok(())
    }
}

/// RGBA bytes to `[F, 3, H, W]` in [-1, 1] (alpha dropped).
pub fn to_pixels(rgba: &[u8], size: FrameSize, device: &Device) -> Tensor<4> {
    let FrameSize {
        count,
        width,
        height,
    } = size;
    let plane = width * height;
    let mut data = vec![0f32; count * 3 * plane];
    for f in 0..count {
        for p in 0..plane {
            let src = (f * plane + p) * 4;
            for c in 0..3 {
                data[(f * 3 + c) * plane + p] = rgba[src + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [count, 3, height, width]), device)
}

/// `[1, 3, F, H, W]` in [0, 1] to RGBA bytes, awaiting the readback.
pub async fn to_rgba(video: Tensor<5>) -> Result<(Vec<u8>, FrameSize), String> {
    let [_, _, count, height, width] = video.dims();
    let data = video
        .into_data_async()
        .await
        .map_err(|e| format!("reading the video back failed: {e:?}"))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| format!("reading the video back failed: {e:?}"))?;
    let plane = width * height;
    let mut rgba = vec![255u8; count * plane * 4];
    for f in 0..count {
        for c in 0..3 {
            for p in 0..plane {
                let v = data[(c * count + f) * plane + p];
                rgba[(f * plane + p) * 4 + c] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok((
        rgba,
        FrameSize {
            count,
            width,
            height,
        },
    ))
}

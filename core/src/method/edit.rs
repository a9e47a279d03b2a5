//! Inversion and editing: DDIM-invert the clip's latents with the empty prompt, then
//! sample from the inverted latents with classifier-free guidance for each new prompt, and
//! decode the result to frames.

use burn::tensor::Tensor;

use crate::error::Result;
use crate::limits::DeviceLimits;
use crate::progress::{Event, Phase, Progress};
use crate::schedule::Ddim;
use crate::transformer::VideoAttentionOptions;
use crate::unet::UNet3D;
use crate::vae::Vae;

/// What a denoising step needs besides its latents: the (tuned) UNet, DDIM over the
/// chosen number of steps, and how attention runs.
#[derive(Clone, Copy)]
pub struct Denoiser<'a> {
    pub unet: &'a UNet3D,
    pub ddim: &'a Ddim,
    pub options: VideoAttentionOptions,
}

impl Denoiser<'_> {
    /// DDIM inversion (Tune-A-Video's `ddim_loop`): from clean latents `[1, C, F, h, w]`
    /// towards noise, predicting with `context` (the empty prompt's embedding). Returns the
    /// trajectory, `steps + 1` latents with the input first.
    pub fn invert(
        &self,
        latents: Tensor<5>,
        context: Tensor<3>,
        progress: Progress,
    ) -> Result<Vec<Tensor<5>>> {
        let mut trajectory = vec![latents.clone()];
        let mut x = latents;
        let steps = self.ddim.steps();
        for (i, t) in self.ddim.inversion_timesteps().into_iter().enumerate() {
            x = self.inversion_step(x, t, context.clone())?;
            trajectory.push(x.clone());
            progress(Event {
                phase: Phase::Invert,
                step: i + 1,
                total: steps,
                loss: None,
            });
        }
        Ok(trajectory)
    }

    /// DDIM sampling (eta 0) from `latents` with classifier-free guidance: the unconditional
    /// and conditional predictions come from one batch of 2. A guidance scale of 1 skips the
    /// unconditional pass.
    pub fn sample(
        &self,
        latents: Tensor<5>,
        cond: Tensor<3>,
        uncond: Tensor<3>,
        guidance: impl Into<Guidance>,
        progress: Progress,
    ) -> Result<Tensor<5>> {
        let guidance = guidance.into();
        let context = guidance_context(cond, uncond, guidance.scale);
        let mut x = latents;
        let steps = self.ddim.steps();
        for (i, &t) in self.ddim.timesteps().iter().enumerate() {
            x = self.sampling_step(x, t, context.clone(), guidance)?;
            progress(Event {
                phase: Phase::Sample,
                step: i + 1,
                total: steps,
                loss: None,
            });
        }
        Ok(x)
    }

    /// One DDIM inversion step at timestep `t`, towards noise.
    pub fn inversion_step(&self, x: Tensor<5>, t: usize, context: Tensor<3>) -> Result<Tensor<5>> {
        let told = self.ddim.inversion_model_timestep(t) as f64;
        let eps = self
            .unet
            .forward(x.clone(), &[told], context, self.options)?;
        Ok(self.ddim.inversion_step(eps, t, x))
    }

    /// One DDIM sampling step (eta 0) at timestep `t` with classifier-free guidance;
    /// `context` comes from [`guidance_context`].
    pub fn sampling_step(
        &self,
        x: Tensor<5>,
        t: usize,
        context: Tensor<3>,
        guidance: impl Into<Guidance>,
    ) -> Result<Tensor<5>> {
        let eps = self.guided_prediction(x.clone(), t, context, guidance)?;
        Ok(self.ddim.step(eps, t, x))
    }

    /// The guided prediction (noise or velocity) at timestep `t` (the unconditional and
    /// conditional ones in one batch of 2 where it fits the device, else in two passes).
    pub fn guided_prediction(
        &self,
        x: Tensor<5>,
        t: usize,
        context: Tensor<3>,
        guidance: impl Into<Guidance>,
    ) -> Result<Tensor<5>> {
        let guidance = guidance.into();
        let (unet, options) = (self.unet, self.options);
        Ok(if guidance.scale == 1.0 {
            unet.forward(x.clone(), &[t as f64], context, options)?
        } else if fits_as_one_batch(unet, &x, options) {
            let input = Tensor::cat(vec![x.clone(), x.clone()], 0);
            let eps = unet.forward(input, &[t as f64], context, options)?;
            let [e_uncond, e_cond] = eps.chunk(2, 0).try_into().expect("two halves");
            guidance.combine(e_uncond, e_cond)
        } else {
            // The batch of 2 would make a tensor over the device's limit: two passes, same
            // result.
            let [c_uncond, c_cond] = context.chunk(2, 0).try_into().expect("two halves");
            let e_uncond = unet.forward(x.clone(), &[t as f64], c_uncond, options)?;
            let e_cond = unet.forward(x, &[t as f64], c_cond, options)?;
            guidance.combine(e_uncond, e_cond)
        })
    }
}

/// Classifier-free guidance: the scale, and how far to rescale the guided prediction back to
/// the conditional one's standard deviation (Lin et al. 2024, "Common Diffusion Noise
/// Schedules and Sample Steps are Flawed", §3.4). Strong guidance inflates the prediction's
/// scale, so latents leave the range the VAE decodes (saturated, washed-out frames); a
/// rescale of 0.5–0.7 keeps them in range. 0 is the reference (Tune-A-Video does not rescale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    pub scale: f64,
    pub rescale: f64,
}

impl From<f64> for Guidance {
    /// Guidance at `scale` without rescaling, as the reference guides.
    fn from(scale: f64) -> Self {
        Self {
            scale,
            rescale: 0.0,
        }
    }
}

impl Guidance {
    /// The guided noise prediction from the unconditional and conditional ones.
    pub fn combine<const D: usize>(&self, uncond: Tensor<D>, cond: Tensor<D>) -> Tensor<D> {
        let guided = uncond.clone() + (cond.clone() - uncond).mul_scalar(self.scale);
        if self.rescale == 0.0 {
            return guided;
        }
        let ratio = per_item_std(cond) / per_item_std(guided.clone());
        let rescaled = guided.clone() * ratio;
        rescaled.mul_scalar(self.rescale) + guided.mul_scalar(1.0 - self.rescale)
    }
}

/// The standard deviation of each batch item over all its other axes, shaped to broadcast.
fn per_item_std<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let mut shape = [1; D];
    shape[0] = dims[0];
    x.reshape([dims[0] as i32, -1])
        .var(1)
        .sqrt()
        .clamp_min(1e-12)
        .reshape(shape)
}

/// Latents `[B, C, F, h, w]` to a video `[B, 3, F, H, W]` in [0, 1], decoding as many frames
/// at a time as the device's largest buffer allows (see [`Vae::frames_per_chunk`]).
pub fn decode_video(
    vae: &Vae,
    latents: Tensor<5>,
    limits: &DeviceLimits,
    progress: Progress,
) -> Result<Tensor<5>> {
    let [b, c, f, h, w] = latents.dims();
    let bytes = latents.dtype().size();
    let chunk = vae.frames_per_chunk(h * vae.downscale, w * vae.downscale, b * f, bytes, limits)?;
    let frames = latents
        .div_scalar(vae.scaling_factor)
        .swap_dims(1, 2)
        .reshape([b * f, c, h, w]);
    let mut decoded = Vec::new();
    let mut done = 0;
    while done < b * f {
        let n = chunk.min(b * f - done);
        decoded.push(vae.decode(frames.clone().narrow(0, done, n)));
        done += n;
        progress(Event {
            phase: Phase::Decode,
            step: done,
            total: b * f,
            loss: None,
        });
    }
    let video = Tensor::cat(decoded, 0);
    let [_, co, hh, ww] = video.dims();
    Ok(video
        .reshape([b, f, co, hh, ww])
        .swap_dims(1, 2)
        .div_scalar(2.0)
        .add_scalar(0.5)
        .clamp(0.0, 1.0))
}

/// The context of a guided sampling step: `[uncond; cond]` (one batch of 2), or `cond`
/// alone at guidance 1.
pub fn guidance_context(cond: Tensor<3>, uncond: Tensor<3>, guidance: f64) -> Tensor<3> {
    if guidance != 1.0 {
        Tensor::cat(vec![uncond, cond], 0)
    } else {
        cond
    }
}

/// Whether the guided batch of 2 keeps every activation within the device's largest buffer.
fn fits_as_one_batch(unet: &UNet3D, x: &Tensor<5>, options: VideoAttentionOptions) -> bool {
    let [b, _, f, h, w] = x.dims();
    let bytes = if options.f16_compute {
        2
    } else {
        x.dtype().size() as u64
    };
    unet.largest_activation_elements(2 * b * f, h, w) * bytes <= options.max_buffer_bytes
}

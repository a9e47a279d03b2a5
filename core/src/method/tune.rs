//! Tuning, as Tune-A-Video defines it: only `attn1.to_q`, `attn2.to_q` and all of
//! `attn_temp` learn; noise-prediction MSE at a uniformly drawn timestep, a fresh VAE
//! posterior sample each step, global gradient-norm clipping, AdamW at a constant rate.
//!
//! Unlike the reference (whose gradient checkpointing leaves the down blocks' layers
//! without gradients), gradients reach every trainable layer.

use std::collections::BTreeMap;

use burn::tensor::Tensor;

use crate::adamw::{AdamW, AdamWSettings};
use crate::error::{Result, TavError};
use crate::schedule::Schedule;
use crate::transformer::VideoAttentionOptions;
use crate::unet::{UNet3D, is_trainable};
use crate::vae::Posterior;
use crate::weights::HostTensor;

/// Optimiser settings; the defaults are the reference's.
pub type TuneSettings = AdamWSettings;

/// The reference's tuning run (Tune-A-Video's configs): this many steps of AdamW at
/// `TuneSettings::default()`'s learning rate (3e-5) …
pub const REFERENCE_STEPS: usize = 500;
/// … with every random draw from this seed. The command line, job files and the browser
/// take their defaults from here.
pub const REFERENCE_SEED: u64 = 33;

/// The random draws of one tuning step.
#[derive(Debug, Clone)]
pub struct StepDraws {
    /// Standard normal `[F, C, h, w]` for the posterior sample.
    pub vae_eps: Tensor<4>,
    /// Standard normal `[1, C, F, h, w]`: the noise to predict.
    pub noise: Tensor<5>,
    /// The training timestep, in `0..num_train_timesteps`.
    pub timestep: usize,
}

/// What tuning learns from: the clip's posterior and its prompt's embedding.
#[derive(Debug, Clone)]
pub struct TuneBatch {
    /// The posterior of the clip's frames, `[F, C, h, w]`.
    pub posterior: Posterior,
    /// The training prompt's text embedding, `[1, 77, D]`.
    pub context: Tensor<3>,
    /// The VAE's latent scaling factor.
    pub scaling_factor: f64,
    /// How the UNet attends (kernels or the plain path).
    pub attention: VideoAttentionOptions,
}

/// What the tuning loop tells its hook after each step.
pub struct StepReport<'a> {
    /// Steps done, this one included.
    pub steps_done: usize,
    /// The step count the run goes to.
    pub total: usize,
    pub outcome: &'a StepOutcome,
    /// The UNet after this step, in train mode (for checkpoints, with
    /// [`Tuner::trainable_values`] and [`Tuner::export_moments`]).
    pub unet: &'a UNet3D,
    pub tuner: &'a Tuner,
}

/// Whether the tuning loop goes on after a step (a hook stops it to cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// The draws of each step of a run, by step number (counted from the run's first step ever,
/// so a resumed run draws what an uninterrupted one would).
pub type DrawsFor<'a> = dyn Fn(usize) -> Result<StepDraws> + 'a;

/// One tuning run: what it learns from, and the draws of each step.
pub struct TuningRun<'a> {
    pub batch: &'a TuneBatch,
    pub schedule: &'a Schedule,
    /// The step count to reach: the run goes from the tuner's steps done to this.
    pub steps: usize,
    pub draws: &'a DrawsFor<'a>,
}

/// The draws of every step from `seed` ([`seeded_draws`]), shaped for `batch`.
pub fn seeded<'a>(
    seed: u64,
    batch: &TuneBatch,
    schedule: &Schedule,
    device: &'a burn::tensor::Device,
) -> impl Fn(usize) -> Result<StepDraws> + 'a {
    let latent_frames = batch.posterior.mean.dims();
    let timesteps = schedule.num_train_timesteps();
    move |step| Ok(seeded_draws(seed, step, latent_frames, timesteps, device))
}

/// One step's results.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Gradients (before clipping), by reference key, when asked for.
    pub grads: Option<BTreeMap<String, HostTensor>>,
}

/// The tuning loop's state: which layers learn, and their AdamW.
#[derive(Debug, Clone)]
pub struct Tuner {
    pub optimiser: AdamW,
}

impl Tuner {
    pub fn new(unet: &UNet3D, settings: TuneSettings) -> Self {
        let trainable = unet.params.iter().filter(|e| is_trainable(&e.key));
        Self {
            optimiser: AdamW::new(trainable, settings),
        }
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.optimiser.steps_done
    }

    /// Reference keys of the trainable parameters.
    pub fn trainable_keys(&self) -> Vec<String> {
        self.optimiser.trainable_keys()
    }

    /// The UNet ready to learn: every parameter tracked by autodiff, only the trainable
    /// ones requiring gradients.
    pub fn train_mode(&self, unet: UNet3D) -> UNet3D {
        self.optimiser.train_mode(unet)
    }

    /// The UNet back on the plain device, for inference.
    pub fn eval_mode(unet: UNet3D) -> UNet3D {
        AdamW::eval_mode(unet)
    }

    /// The tuning loop: from the tuner's steps done up to `run.steps`, each step with its
    /// draws, `hook` told after each (progress, losses, checkpoints; it may stop the run).
    /// Takes the UNet for inference and returns it so, tuned. Blocks on the GPU's readbacks
    /// (native only; browsers use [`Tuner::run_async`]).
    pub fn run(
        &mut self,
        unet: UNet3D,
        run: &TuningRun<'_>,
        hook: &mut dyn FnMut(StepReport<'_>) -> Result<Flow>,
    ) -> Result<UNet3D> {
        futures_lite::future::block_on(self.run_async(unet, run, hook))
    }

    /// [`Tuner::run`], awaiting the GPU's readbacks instead of blocking.
    pub async fn run_async(
        &mut self,
        unet: UNet3D,
        run: &TuningRun<'_>,
        hook: &mut dyn FnMut(StepReport<'_>) -> Result<Flow>,
    ) -> Result<UNet3D> {
        let mut unet = self.train_mode(unet);
        while self.steps_done() < run.steps {
            let draws = (run.draws)(self.steps_done())?;
            let (next, outcome) = self
                .step_async(unet, run.batch, draws, run.schedule, false)
                .await?;
            unet = next;
            let report = StepReport {
                steps_done: self.steps_done(),
                total: run.steps,
                outcome: &outcome,
                unet: &unet,
                tuner: self,
            };
            if hook(report)? == Flow::Stop {
                break;
            }
        }
        Ok(Self::eval_mode(unet))
    }

    /// One tuning step. `unet` must be in [`Tuner::train_mode`]. Blocks on the GPU's
    /// readbacks (native only; browsers use [`Tuner::step_async`]).
    pub fn step(
        &mut self,
        unet: UNet3D,
        batch: &TuneBatch,
        draws: StepDraws,
        schedule: &Schedule,
        want_grads: bool,
    ) -> Result<(UNet3D, StepOutcome)> {
        futures_lite::future::block_on(self.step_async(unet, batch, draws, schedule, want_grads))
    }

    /// One tuning step, awaiting the GPU's readbacks (loss and gradient norm) instead of
    /// blocking: what a browser must do.
    pub async fn step_async(
        &mut self,
        unet: UNet3D,
        batch: &TuneBatch,
        draws: StepDraws,
        schedule: &Schedule,
        want_grads: bool,
    ) -> Result<(UNet3D, StepOutcome)> {
        let latents = clip_latents(batch.posterior.sample(draws.vae_eps), batch.scaling_factor);
        let noisy = schedule.add_noise(latents.clone(), draws.noise.clone(), draws.timestep);
        let target = schedule.training_target(latents, draws.noise.clone(), draws.timestep);
        // Mixed precision (`--f16`), as the reference's autocast: f16 activations (so also
        // recomputed blocks' kept inputs) and arithmetic; f32 tuned layers (master weights,
        // their arithmetic, AdamW's state), norm statistics, softmax and loss.
        let mixed =
            batch.attention.f16_compute && crate::precision::supports_f16(&draws.noise.device());
        let elements = draws.noise.shape().num_elements();
        let predicted = unet.forward(
            noisy,
            &[draws.timestep as f64],
            batch.context.clone(),
            VideoAttentionOptions {
                f16_compute: mixed,
                ..batch.attention
            },
        )?;
        let loss = (predicted - target).square().mean();
        let loss_value: f32 = loss
            .clone()
            .try_into_scalar_async()
            .await
            .map_err(|e| TavError::Device(format!("reading the loss back failed: {e:?}")))?;
        if !loss_value.is_finite() {
            return Err(TavError::NonFinite(format!(
                "the tuning loss is {loss_value} at step {}; lower the learning rate",
                self.steps_done() + 1
            )));
        }
        let loss_scale = if mixed { loss_scale(elements) } else { 1.0 };
        let (unet, grads) = self
            .optimiser
            .step_scaled(unet, loss, loss_scale, want_grads)
            .await
            .map_err(|e| match e {
                TavError::NonFinite(_) if mixed => TavError::NonFinite(format!(
                    "the gradients overflowed f16 at step {}; run without --f16",
                    self.steps_done() + 1
                )),
                other => other,
            })?;
        Ok((
            unet,
            StepOutcome {
                loss: loss_value,
                grad_norm: grads.norm,
                grads: grads.by_key,
            },
        ))
    }

    /// The AdamW moments by reference key (flat, as kept), for a checkpoint.
    pub fn export_moments(&self) -> BTreeMap<String, (HostTensor, HostTensor)> {
        self.optimiser.export_moments()
    }

    /// Restores the optimiser from a checkpoint: its moments and step count.
    pub fn import_state(
        &mut self,
        moments: &BTreeMap<String, (HostTensor, HostTensor)>,
        steps_done: usize,
        device: &burn::tensor::Device,
    ) -> Result<()> {
        self.optimiser.import_state(moments, steps_done, device)
    }

    /// The trainable parameters' current values by reference key, in PyTorch layout.
    pub fn trainable_values(&self, unet: &UNet3D) -> BTreeMap<String, HostTensor> {
        futures_lite::future::block_on(self.trainable_values_async(unet))
            .expect("reading the tuned weights back")
    }

    /// [`Tuner::trainable_values`], awaiting each readback.
    pub async fn trainable_values_async(
        &self,
        unet: &UNet3D,
    ) -> Result<BTreeMap<String, HostTensor>> {
        self.optimiser.values(unet).await
    }
}

/// The loss scale of mixed-precision tuning: the mean's gradient is 2·(pred − noise) / n for
/// n predicted values (under 1e-5 for SD's 24 frames of 64×64 latents, in f16's subnormals),
/// so the loss is scaled by the largest power of two up to n, putting the prediction's
/// gradient near 1.
pub fn loss_scale(elements: usize) -> f32 {
    let bits = usize::BITS - 1 - elements.max(1).leading_zeros();
    (1u64 << bits.min(24)) as f32
}

/// The draws of tuning step `step` from `seed`: each step has its own stream, so a resumed
/// run draws exactly what an uninterrupted one would.
pub fn seeded_draws(
    seed: u64,
    step: usize,
    latent_frames: [usize; 4],
    num_train_timesteps: usize,
    device: &burn::tensor::Device,
) -> StepDraws {
    let [f, c, h, w] = latent_frames;
    let mut rng = crate::draws::SeededRng::for_stream(seed, &format!("tune-step-{step}"));
    let n = f * c * h * w;
    let vae_eps = HostTensor::new(vec![f, c, h, w], rng.normal_vec(n)).to_device::<4>(device);
    let noise = HostTensor::new(vec![1, c, f, h, w], rng.normal_vec(n)).to_device::<5>(device);
    let timestep = rng.below(num_train_timesteps as u64) as usize;
    StepDraws {
        vae_eps,
        noise,
        timestep,
    }
}

/// `[F, C, h, w]` posterior sample → `[1, C, F, h, w]` scaled latents.
pub fn clip_latents(sample: Tensor<4>, scaling_factor: f64) -> Tensor<5> {
    let [f, c, h, w] = sample.dims();
    sample
        .mul_scalar(scaling_factor)
        .reshape([1, f, c, h, w])
        .swap_dims(1, 2)
}

#[cfg(test)]
mod tests {
    use super::loss_scale;

    /// The scale is the largest power of two up to the predicted values (capped at 2^24),
    /// so the scaled mean's gradient, 2·(pred − noise)·scale / n, is near 1.
    #[test]
    fn loss_scale_is_the_largest_power_of_two_up_to_the_values() {
        assert_eq!(loss_scale(1), 1.0);
        assert_eq!(loss_scale(3 * 4 * 16 * 16), 2048.0);
        assert_eq!(loss_scale(24 * 4 * 64 * 64), 262_144.0);
        assert_eq!(loss_scale(1 << 30), (1u32 << 24) as f32);
        for n in [5usize, 3072, 393_216] {
            let s = loss_scale(n) as usize;
            assert!(s <= n && 2 * s > n && s.is_power_of_two(), "{n}: {s}");
        }
    }
}

//! The noise schedule: DDPM's forward noising for tuning, DDIM's deterministic (eta 0)
//! sampling step, and DDIM inversion's `next_step` as Tune-A-Video does it; for a model that
//! predicts the noise (SD v1.x) or the velocity (v-prediction).
//!
//! Schedule arithmetic follows the reference's float32 computation, so timesteps and
//! coefficients match bit for bit where it matters.

use burn::tensor::Tensor;

use crate::config::{BetaSchedule, PredictionType, SchedulerConfig};
use crate::error::{Result, TavError};

#[derive(Debug, Clone)]
pub struct Schedule {
    /// `ᾱ_t` for t in 0..num_train_timesteps (float32, as the reference).
    pub alphas_cumprod: Vec<f32>,
    /// `ᾱ` used past the end of the schedule: 1 or `ᾱ_0` (`set_alpha_to_one`).
    pub final_alpha_cumprod: f32,
    pub steps_offset: usize,
    /// What the UNet predicts: its training target, and how a step reads its output.
    pub prediction: PredictionType,
}

impl Schedule {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate("scheduler/scheduler_config.json")?;
        let n = cfg.num_train_timesteps;
        let betas: Vec<f32> = match (&cfg.trained_betas, cfg.beta_schedule) {
            (Some(b), _) => {
                if b.len() != n {
                    return Err(TavError::Config {
                        path: "scheduler/scheduler_config.json".into(),
                        reason: format!("{} trained_betas for {n} timesteps", b.len()),
                    });
                }
                b.iter().map(|&v| v as f32).collect()
            }
            (None, BetaSchedule::ScaledLinear) => linspace_f32(
                (cfg.beta_start as f32).sqrt(),
                (cfg.beta_end as f32).sqrt(),
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            (None, BetaSchedule::Linear) => {
                linspace_f32(cfg.beta_start as f32, cfg.beta_end as f32, n)
            }
        };
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0f32;
        for beta in betas {
            acc *= 1.0 - beta;
            alphas_cumprod.push(acc);
        }
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            steps_offset: cfg.steps_offset,
            prediction: cfg.prediction_type,
        })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// DDIM timesteps for `steps` inference steps, descending ("leading" spacing plus
    /// `steps_offset`), e.g. 5 steps → [801, 601, 401, 201, 1].
    pub fn ddim_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let n = self.num_train_timesteps();
        if steps == 0 || steps > n {
            return Err(TavError::InvalidInput(format!(
                "inference steps must be between 1 and {n}, got {steps}"
            )));
        }
        let ratio = n / steps;
        Ok((0..steps)
            .rev()
            .map(|i| i * ratio + self.steps_offset)
            .collect())
    }

    fn alpha_at(&self, t: i64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)] as f64
        } else {
            self.final_alpha_cumprod as f64
        }
    }

    /// DDPM forward noising: `√ᾱ_t · x0 + √(1−ᾱ_t) · noise`.
    pub fn add_noise<const D: usize>(
        &self,
        x0: Tensor<D>,
        noise: Tensor<D>,
        t: usize,
    ) -> Tensor<D> {
        let a = self.alpha_at(t as i64);
        x0.mul_scalar(a.sqrt()) + noise.mul_scalar((1.0 - a).sqrt())
    }

    /// What the UNet learns to predict for `x0` noised with `noise` at `t`: the noise, or
    /// the velocity `√ᾱ_t · noise − √(1−ᾱ_t) · x0`.
    pub fn training_target<const D: usize>(
        &self,
        x0: Tensor<D>,
        noise: Tensor<D>,
        t: usize,
    ) -> Tensor<D> {
        match self.prediction {
            PredictionType::Epsilon => noise,
            PredictionType::VPrediction => {
                let a = self.alpha_at(t as i64);
                noise.mul_scalar(a.sqrt()) - x0.mul_scalar((1.0 - a).sqrt())
            }
        }
    }

    /// The output whose implied clean sample for `noisy` at `t` is `x0`: the noise
    /// `(x_t − √ᾱ·x0)/√(1−ᾱ)` or the velocity `(√ᾱ·x_t − x0)/√(1−ᾱ)`. For `noisy` made from `x0`
    /// by [`Self::add_noise`] it is [`Self::training_target`]; pretraining's edit pairs give
    /// it another frame's `x0` (at noisy timesteps only: `√(1−ᾱ)` divides).
    pub fn target_toward<const D: usize>(
        &self,
        noisy: Tensor<D>,
        x0: Tensor<D>,
        t: usize,
    ) -> Tensor<D> {
        let a = self.alpha_at(t as i64);
        let scale = 1.0 / (1.0 - a).sqrt();
        match self.prediction {
            PredictionType::Epsilon => (noisy - x0.mul_scalar(a.sqrt())).mul_scalar(scale),
            PredictionType::VPrediction => (noisy.mul_scalar(a.sqrt()) - x0).mul_scalar(scale),
        }
    }

    /// The noise in `x` (at `ᾱ = alpha`) that the UNet's `output` implies: the output itself,
    /// or from a velocity `v`, `√ᾱ · v + √(1−ᾱ) · x`.
    fn noise_from<const D: usize>(&self, output: Tensor<D>, x: Tensor<D>, alpha: f64) -> Tensor<D> {
        match self.prediction {
            PredictionType::Epsilon => output,
            PredictionType::VPrediction => {
                output.mul_scalar(alpha.sqrt()) + x.mul_scalar((1.0 - alpha).sqrt())
            }
        }
    }

    /// `√ᾱ_to · x̂0 + √(1−ᾱ_to) · eps` with `x̂0 = (x − √(1−ᾱ_from) · eps) / √ᾱ_from`.
    fn move_along<const D: usize>(
        &self,
        eps: Tensor<D>,
        x: Tensor<D>,
        from: f64,
        to: f64,
    ) -> Tensor<D> {
        let x0 = (x - eps.clone().mul_scalar((1.0 - from).sqrt())).div_scalar(from.sqrt());
        x0.mul_scalar(to.sqrt()) + eps.mul_scalar((1.0 - to).sqrt())
    }
}

/// DDIM (eta 0) over `steps` inference steps of a training schedule: its timesteps, and the
/// step from each to the next, for sampling and for inversion. Built once per step count, so
/// the steps need not be told it again.
#[derive(Debug, Clone)]
pub struct Ddim {
    schedule: Schedule,
    /// Descending, the order sampling takes them.
    timesteps: Vec<usize>,
    /// The spacing between timesteps.
    ratio: usize,
}

impl Ddim {
    /// DDIM over `steps` steps of `schedule` (between 1 and its training timesteps).
    pub fn new(schedule: &Schedule, steps: usize) -> Result<Self> {
        Ok(Self {
            timesteps: schedule.ddim_timesteps(steps)?,
            ratio: schedule.num_train_timesteps() / steps,
            schedule: schedule.clone(),
        })
    }

    /// Inference steps.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The timesteps in the order sampling takes them (descending).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The timesteps in the order inversion takes them (ascending).
    pub fn inversion_timesteps(&self) -> Vec<usize> {
        self.timesteps.iter().rev().copied().collect()
    }

    /// One sampling step from `t` to the previous timestep, given the UNet's output at `t`
    /// (the noise, or the velocity, as the schedule's prediction type says).
    pub fn step<const D: usize>(&self, output: Tensor<D>, t: usize, x: Tensor<D>) -> Tensor<D> {
        let s = &self.schedule;
        let prev = t as i64 - self.ratio as i64;
        let from = s.alpha_at(t as i64);
        let eps = s.noise_from(output, x.clone(), from);
        s.move_along(eps, x, from, s.alpha_at(prev))
    }

    /// The timestep the UNet is told in the inversion step up to `t`. For noise prediction,
    /// `t` itself, as Tune-A-Video's `next_step` (it evaluates the sample, still at the
    /// previous timestep, as if it were at `t`; a noise prediction barely changes between
    /// the two). For a velocity, the sample's own timestep, as diffusers'
    /// DDIMInverseScheduler: a velocity depends on the noise level, and at the one above it
    /// the toy model's inversion lost the clip's layout (docs/toy-world.md).
    pub fn inversion_model_timestep(&self, t: usize) -> usize {
        match self.schedule.prediction {
            PredictionType::Epsilon => t,
            PredictionType::VPrediction => t.saturating_sub(self.ratio),
        }
    }

    /// DDIM inversion's step from the previous timestep up to `t` (Tune-A-Video's
    /// `next_step`): the UNet's output (at [`Self::inversion_model_timestep`]) moves the
    /// sample one step towards noise. A velocity is read against the sample's own timestep,
    /// as diffusers' DDIMInverseScheduler.
    pub fn inversion_step<const D: usize>(
        &self,
        output: Tensor<D>,
        t: usize,
        x: Tensor<D>,
    ) -> Tensor<D> {
        let s = &self.schedule;
        let current = s.alpha_at((t as i64 - self.ratio as i64).min(999));
        let eps = s.noise_from(output, x.clone(), current);
        s.move_along(eps, x, current, s.alpha_at(t as i64))
    }
}

/// `torch.linspace(start, end, n, dtype=float32)`: the halves are computed from each end.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddim_timesteps_leading_with_offset() {
        let s = Schedule::new(&SchedulerConfig::sd_v1_5()).unwrap();
        assert_eq!(s.ddim_timesteps(5).unwrap(), vec![801, 601, 401, 201, 1]);
        assert_eq!(s.ddim_timesteps(1).unwrap(), vec![1]);
        assert_eq!(s.ddim_timesteps(50).unwrap()[0], 981);
        assert!(s.ddim_timesteps(0).is_err());
        assert!(s.ddim_timesteps(1001).is_err());
        let ddim = Ddim::new(&s, 5).unwrap();
        assert_eq!(ddim.steps(), 5);
        assert_eq!(ddim.inversion_timesteps(), vec![1, 201, 401, 601, 801]);
        assert!(Ddim::new(&s, 0).is_err());
    }

    /// Standard normal values of `shape` drawn from `seed`, on the default device.
    fn normal_values(seed: u64, shape: [usize; 2]) -> Tensor<2> {
        let mut rng = crate::draws::SeededRng::new(seed);
        let values = rng.normal_vec(shape[0] * shape[1]);
        crate::weights::HostTensor::new(shape.to_vec(), values)
            .to_device::<2>(&burn::tensor::Device::default())
    }

    /// With the exact output (the noise, or the velocity), a DDIM step from `x0` noised at
    /// `t` lands on `x0` noised with the same noise at the previous timestep, and an inversion
    /// step goes back up: for both prediction types, at the noisy end and the clean one.
    #[test]
    fn ddim_steps_follow_the_exact_output_for_noise_and_velocity_prediction() {
        let values = |seed| normal_values(seed, [4, 6]);
        let (x0, noise) = (values(1).mul_scalar(1.3).add_scalar(-0.2), values(2));
        for prediction in [PredictionType::Epsilon, PredictionType::VPrediction] {
            let mut cfg = SchedulerConfig::sd_v1_5();
            cfg.prediction_type = prediction;
            let s = Schedule::new(&cfg).unwrap();
            let ddim = Ddim::new(&s, 25).unwrap();
            for t in [961usize, 481, 41, 1] {
                // Below the first step, the step lands on `ᾱ_0` (`set_alpha_to_one` false).
                let prev = t.saturating_sub(40);
                let at = |t: usize| s.add_noise(x0.clone(), noise.clone(), t);
                let close = |a: Tensor<2>, b: Tensor<2>, what: &str| {
                    let err: f32 = (a - b).abs().max().into_scalar();
                    assert!(err < 2e-4, "{prediction:?} t={t} {what}: off by {err}");
                };
                let output = s.training_target(x0.clone(), noise.clone(), t);
                let stepped = ddim.step(output, t, at(t));
                close(stepped, at(prev), "sampling step");
                if t > 40 {
                    // Inversion reads the output at `t` against the sample at `prev`.
                    let output = s.training_target(x0.clone(), noise.clone(), prev);
                    close(
                        ddim.inversion_step(output, t, at(prev)),
                        at(t),
                        "inversion step",
                    );
                }
            }
        }
        // The velocity differs from the noise: the two types are not read alike.
        let mut cfg = SchedulerConfig::sd_v1_5();
        cfg.prediction_type = PredictionType::VPrediction;
        let v = Schedule::new(&cfg)
            .unwrap()
            .training_target(x0.clone(), noise.clone(), 961);
        let diff: f32 = (v - noise).abs().max().into_scalar();
        assert!(diff > 0.5);
    }

    /// `target_toward` is the training target for a sample's own clean latent, and for
    /// another latent an output whose implied clean sample is that latent.
    #[test]
    fn target_toward_implies_the_given_clean_sample() {
        let values = |seed| normal_values(seed, [3, 5]);
        let (x0, noise, other) = (values(1), values(2), values(3).add_scalar(0.7));
        for prediction in [PredictionType::Epsilon, PredictionType::VPrediction] {
            let mut cfg = SchedulerConfig::sd_v1_5();
            cfg.prediction_type = prediction;
            let s = Schedule::new(&cfg).unwrap();
            for t in [999usize, 700, 500, 100] {
                let noisy = s.add_noise(x0.clone(), noise.clone(), t);
                let err = |a: Tensor<2>, b: Tensor<2>| -> f32 { (a - b).abs().max().into_scalar() };
                let own = s.target_toward(noisy.clone(), x0.clone(), t);
                let e = err(own, s.training_target(x0.clone(), noise.clone(), t));
                assert!(e < 1e-3, "{prediction:?} t={t}: own target off by {e}");
                let out = s.target_toward(noisy.clone(), other.clone(), t);
                let a = s.alpha_at(t as i64);
                let implied = match prediction {
                    PredictionType::Epsilon => {
                        (noisy.clone() - out.mul_scalar((1.0 - a).sqrt())).div_scalar(a.sqrt())
                    }
                    PredictionType::VPrediction => {
                        noisy.clone().mul_scalar(a.sqrt()) - out.mul_scalar((1.0 - a).sqrt())
                    }
                };
                let e = err(implied, other.clone());
                assert!(e < 1e-3, "{prediction:?} t={t}: implied sample off by {e}");
            }
        }
    }

    #[test]
    fn schedule_is_decreasing_and_final_alpha_follows_config() {
        let mut cfg = SchedulerConfig::sd_v1_5();
        let s = Schedule::new(&cfg).unwrap();
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        assert_eq!(s.final_alpha_cumprod, s.alphas_cumprod[0]);
        cfg.set_alpha_to_one = true;
        assert_eq!(Schedule::new(&cfg).unwrap().final_alpha_cumprod, 1.0);
    }
}

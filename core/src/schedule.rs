//! The noise schedule: DDPM's forward noising for tuning, DDIM's deterministic (eta 0)
//! sampling step, and DDIM inversion's `next_step` as Tune-A-Video does it.
//!
//! Schedule arithmetic follows the reference's float32 computation, so timesteps and
//! coefficients match bit for bit where it matters.

use burn::tensor::Tensor;

use crate::config::SchedulerConfig;
use crate::error::{Result, TavError};

#[derive(Debug, Clone)]
pub struct Schedule {
    /// `ᾱ_t` for t in 0..num_train_timesteps (float32, as the reference).
    pub alphas_cumprod: Vec<f32>,
    /// `ᾱ` used past the end of the schedule: 1 or `ᾱ_0` (`set_alpha_to_one`).
    pub final_alpha_cumprod: f32,
    pub steps_offset: usize,
}

impl Schedule {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate("scheduler/scheduler_config.json")?;
        let n = cfg.num_train_timesteps;
        let betas: Vec<f32> = match (&cfg.trained_betas, cfg.beta_schedule.as_str()) {
            (Some(b), _) => {
                if b.len() != n {
                    return Err(TavError::Config {
                        path: "scheduler/scheduler_config.json".into(),
                        reason: format!("{} trained_betas for {n} timesteps", b.len()),
                    });
                }
                b.iter().map(|&v| v as f32).collect()
            }
            (None, "scaled_linear") => linspace_f32(
                (cfg.beta_start as f32).sqrt(),
                (cfg.beta_end as f32).sqrt(),
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            (None, _) => linspace_f32(cfg.beta_start as f32, cfg.beta_end as f32, n),
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

    /// The spacing between DDIM timesteps.
    pub fn step_ratio(&self, steps: usize) -> usize {
        self.num_train_timesteps() / steps
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

    /// One DDIM step (eta 0) from `t` to `t − step_ratio`, given the predicted noise.
    pub fn ddim_step<const D: usize>(
        &self,
        eps: Tensor<D>,
        t: usize,
        x: Tensor<D>,
        steps: usize,
    ) -> Tensor<D> {
        let prev = t as i64 - self.step_ratio(steps) as i64;
        self.move_along(eps, x, self.alpha_at(t as i64), self.alpha_at(prev))
    }

    /// DDIM inversion's step from `t − step_ratio` up to `t` (Tune-A-Video's `next_step`):
    /// the noise predicted at `t` moves the sample one step towards noise.
    pub fn ddim_inversion_step<const D: usize>(
        &self,
        eps: Tensor<D>,
        t: usize,
        x: Tensor<D>,
        steps: usize,
    ) -> Tensor<D> {
        let current = (t as i64 - self.step_ratio(steps) as i64).min(999);
        self.move_along(eps, x, self.alpha_at(current), self.alpha_at(t as i64))
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

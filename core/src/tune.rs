//! Tuning, as Tune-A-Video defines it: only `attn1.to_q`, `attn2.to_q` and all of
//! `attn_temp` learn; noise-prediction MSE at a uniformly drawn timestep, a fresh VAE
//! posterior sample each step, global gradient-norm clipping, AdamW at a constant rate.
//!
//! Unlike the reference (whose gradient checkpointing leaves the down blocks' layers
//! without gradients), gradients reach every trainable layer.

use std::collections::{BTreeMap, HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Gradients, Tensor};

use crate::error::{Result, TavError};
use crate::schedule::Schedule;
use crate::transformer::VideoAttentionOptions;
use crate::unet::{UNet3D, is_trainable};
use crate::vae::Posterior;
use crate::weights::HostTensor;

/// Optimiser settings; the defaults are the reference's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuneSettings {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
    pub max_grad_norm: f64,
}

impl Default for TuneSettings {
    fn default() -> Self {
        Self {
            learning_rate: 3e-5,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 1e-2,
            eps: 1e-8,
            max_grad_norm: 1.0,
        }
    }
}

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

/// One step's results.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Gradients (before clipping), by reference key, when asked for.
    pub grads: Option<BTreeMap<String, HostTensor>>,
}

/// AdamW moments of one parameter, flattened.
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// The optimiser and the bookkeeping of which parameters learn.
#[derive(Debug, Clone)]
pub struct Tuner {
    pub settings: TuneSettings,
    trainable: HashMap<ParamId, String>,
    moments: HashMap<ParamId, Moments>,
    /// Steps taken so far.
    pub steps_done: usize,
}

impl Tuner {
    pub fn new(unet: &UNet3D, settings: TuneSettings) -> Self {
        let trainable = unet
            .params
            .iter()
            .filter(|e| is_trainable(&e.key))
            .map(|e| (e.id, e.key.clone()))
            .collect();
        Self {
            settings,
            trainable,
            moments: HashMap::new(),
            steps_done: 0,
        }
    }

    /// Reference keys of the trainable parameters.
    pub fn trainable_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.trainable.values().cloned().collect();
        keys.sort();
        keys
    }

    /// The UNet ready to learn: every parameter tracked by autodiff, only the trainable
    /// ones requiring gradients.
    pub fn train_mode(&self, unet: UNet3D) -> UNet3D {
        let ids: HashSet<ParamId> = self.trainable.keys().copied().collect();
        unet.map(&mut ToAutodiff { trainable: ids })
    }

    /// The UNet back on the plain device, for inference.
    pub fn eval_mode(unet: UNet3D) -> UNet3D {
        unet.map(&mut FromAutodiff)
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
        let noisy = schedule.add_noise(latents, draws.noise.clone(), draws.timestep);
        let predicted = unet.forward(
            noisy,
            &[draws.timestep as f64],
            batch.context.clone(),
            // Training arithmetic stays f32: AdamW's updates are smaller than f16's steps.
            VideoAttentionOptions {
                f16_compute: false,
                ..batch.attention
            },
        )?;
        let loss = (predicted - draws.noise).square().mean();
        let loss_value: f32 = loss
            .clone()
            .try_into_scalar_async()
            .await
            .map_err(|e| TavError::Device(format!("reading the loss back failed: {e:?}")))?;
        if !loss_value.is_finite() {
            return Err(TavError::NonFinite(format!(
                "the tuning loss is {loss_value} at step {}; lower the learning rate",
                self.steps_done + 1
            )));
        }
        let gradients = loss.backward();
        let mut collector = GradCollector {
            gradients: &gradients,
            trainable: &self.trainable,
            grads: HashMap::new(),
            dims: HashMap::new(),
        };
        unet.visit(&mut collector);
        let (grads, dims) = (collector.grads, collector.dims);

        let sum_squares = grads
            .values()
            .map(|g| g.clone().square().sum())
            .reduce(|a, b| a + b);
        let sum_squares: f32 = match sum_squares {
            Some(t) => t.try_into_scalar_async().await,
            None => Ok(0.0),
        }
        .map_err(|e| TavError::Device(format!("reading the gradient norm back failed: {e:?}")))?;
        let grad_norm = sum_squares.sqrt();
        if !grad_norm.is_finite() {
            return Err(TavError::NonFinite(format!(
                "the gradient norm is {grad_norm} at step {}; lower the learning rate",
                self.steps_done + 1
            )));
        }
        let clip = (self.settings.max_grad_norm / (grad_norm as f64 + 1e-6)).min(1.0);

        let exported = want_grads.then(|| {
            let mut out = BTreeMap::new();
            for (id, g) in &grads {
                let key = self.trainable[id].clone();
                out.insert(key, host_in_reference_layout(g.clone(), &dims[id]));
            }
            out
        });

        self.steps_done += 1;
        let mut update = AdamWUpdate {
            tuner: self,
            grads,
            clip,
        };
        let unet = unet.map(&mut update);
        Ok((
            unet,
            StepOutcome {
                loss: loss_value,
                grad_norm,
                grads: exported,
            },
        ))
    }

    /// The AdamW moments by reference key (flat, as kept), for a checkpoint.
    pub fn export_moments(&self) -> BTreeMap<String, (HostTensor, HostTensor)> {
        let host = |t: &Tensor<1>| {
            let data: Vec<f32> = t.clone().try_into_vec_as::<f32>().expect("f32 readback");
            HostTensor::new(vec![data.len()], data)
        };
        self.moments
            .iter()
            .map(|(id, m)| (self.trainable[id].clone(), (host(&m.m), host(&m.v))))
            .collect()
    }

    /// Restores the optimiser from a checkpoint: its moments and step count.
    pub fn import_state(
        &mut self,
        moments: &BTreeMap<String, (HostTensor, HostTensor)>,
        steps_done: usize,
        device: &burn::tensor::Device,
    ) -> Result<()> {
        let ids: HashMap<&str, ParamId> = self
            .trainable
            .iter()
            .map(|(id, k)| (k.as_str(), *id))
            .collect();
        let mut restored = HashMap::new();
        for (key, (m, v)) in moments {
            let id = ids.get(key.as_str()).ok_or_else(|| {
                TavError::InvalidInput(format!(
                    "checkpoint has optimiser state for `{key}`, which is not trainable"
                ))
            })?;
            restored.insert(
                *id,
                Moments {
                    m: m.to_device::<1>(device),
                    v: v.to_device::<1>(device),
                },
            );
        }
        self.moments = restored;
        self.steps_done = steps_done;
        Ok(())
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
        let mut reader = ValueReader {
            wanted: &self.trainable,
            out: Vec::new(),
        };
        unet.visit(&mut reader);
        let mut values = BTreeMap::new();
        for (key, flat, dims) in reader.out {
            let failed = |e: String| TavError::Device(format!("reading `{key}` back failed: {e}"));
            let data: Vec<f32> = flat
                .into_data_async()
                .await
                .map_err(|e| failed(format!("{e:?}")))?
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| failed(format!("{e:?}")))?;
            let host = HostTensor::new(dims.clone(), data);
            let host = if dims.len() == 2 {
                host.transposed_2d()
            } else {
                host
            };
            values.insert(key, host);
        }
        Ok(values)
    }
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

/// A tensor in PyTorch layout on the host: rank-2 parameters are linear weights, kept by
/// burn as `[in, out]`.
fn host_in_reference_layout<const D: usize>(t: Tensor<D>, dims: &[usize]) -> HostTensor {
    let data: Vec<f32> = t.try_into_vec_as::<f32>().expect("f32 readback");
    let host = HostTensor::new(dims.to_vec(), data);
    if dims.len() == 2 {
        host.transposed_2d()
    } else {
        host
    }
}

struct ToAutodiff {
    trainable: HashSet<ParamId>,
}

impl ModuleMapper for ToAutodiff {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let learn = self.trainable.contains(&param.id);
        let id = param.id;
        let value = param.val().inner().autodiff();
        let value = if learn { value.require_grad() } else { value };
        Param::initialized(id, value)
    }
}

struct FromAutodiff;

impl ModuleMapper for FromAutodiff {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        Param::initialized(id, param.val().inner())
    }
}

struct GradCollector<'a> {
    gradients: &'a Gradients,
    trainable: &'a HashMap<ParamId, String>,
    grads: HashMap<ParamId, Tensor<1>>,
    /// Each gradient's shape as burn holds the parameter.
    dims: HashMap<ParamId, Vec<usize>>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.trainable.contains_key(&param.id) {
            return;
        }
        // A parameter without a gradient is skipped by the optimiser, as PyTorch does.
        if let Some(g) = param.val().grad(self.gradients) {
            self.dims.insert(param.id, g.dims().to_vec());
            self.grads.insert(param.id, g.inner().reshape([-1]));
        }
    }
}

/// Collects the wanted parameters (flattened, with their burn dims) for reading back.
struct ValueReader<'a> {
    wanted: &'a HashMap<ParamId, String>,
    out: Vec<(String, Tensor<1>, Vec<usize>)>,
}

impl ModuleVisitor for ValueReader<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(key) = self.wanted.get(&param.id) {
            let value = param.val().inner();
            let dims = value.dims().to_vec();
            self.out.push((key.clone(), value.flatten(0, D - 1), dims));
        }
    }
}

/// PyTorch's AdamW (decoupled weight decay, bias-corrected moments) on clipped gradients.
struct AdamWUpdate<'a> {
    tuner: &'a mut Tuner,
    grads: HashMap<ParamId, Tensor<1>>,
    clip: f64,
}

impl ModuleMapper for AdamWUpdate<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove(&param.id) else {
            return param;
        };
        let s = self.tuner.settings;
        let t = self.tuner.steps_done as i32;
        let id = param.id;
        let value = param.val().inner();
        let dims = value.dims();
        let flat = value.reshape([-1]);
        let grad = grad.mul_scalar(self.clip);
        let moments = self.tuner.moments.remove(&id).unwrap_or_else(|| Moments {
            m: grad.zeros_like(),
            v: grad.zeros_like(),
        });
        let m = moments.m.mul_scalar(s.beta1) + grad.clone().mul_scalar(1.0 - s.beta1);
        let v = moments.v.mul_scalar(s.beta2) + grad.square().mul_scalar(1.0 - s.beta2);
        let bias1 = 1.0 - s.beta1.powi(t);
        let bias2 = 1.0 - s.beta2.powi(t);
        let denom = v.clone().sqrt().div_scalar(bias2.sqrt()).add_scalar(s.eps);
        let decayed = flat.mul_scalar(1.0 - s.learning_rate * s.weight_decay);
        let updated = decayed - (m.clone() / denom).mul_scalar(s.learning_rate / bias1);
        self.tuner.moments.insert(id, Moments { m, v });
        Param::initialized(id, updated.reshape(dims).autodiff().require_grad())
    }
}

//! PyTorch's AdamW (decoupled weight decay, bias-corrected moments) with global gradient-norm
//! clipping, over any set of a module's parameters. Tuning uses it for the few layers
//! Tune-A-Video trains; pretraining the toy world uses it for whole models.

use std::collections::{BTreeMap, HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Gradients, Tensor};

use crate::error::{Result, TavError};
use crate::weights::{HostTensor, Layout, ParamEntry};

/// Optimiser settings; the defaults are Tune-A-Video's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
    pub max_grad_norm: f64,
}

impl Default for AdamWSettings {
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

/// One step's gradients, before clipping.
#[derive(Debug, Clone)]
pub struct StepGradients {
    /// Global gradient norm before clipping.
    pub norm: f32,
    /// Gradients by reference key in PyTorch layout, when asked for.
    pub by_key: Option<BTreeMap<String, HostTensor>>,
}

/// First and second moments of one parameter, flat.
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// The optimiser and its state for the parameters it trains.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub settings: AdamWSettings,
    /// Trained parameters: reference key and layout.
    trainable: HashMap<ParamId, (String, Layout)>,
    moments: HashMap<ParamId, Moments>,
    /// Steps taken so far.
    pub steps_done: usize,
}

impl AdamW {
    /// Trains the parameters `entries` lists.
    pub fn new<'a>(
        entries: impl IntoIterator<Item = &'a ParamEntry>,
        settings: AdamWSettings,
    ) -> Self {
        Self {
            settings,
            trainable: entries
                .into_iter()
                .map(|e| (e.id, (e.key.clone(), e.layout)))
                .collect(),
            moments: HashMap::new(),
            steps_done: 0,
        }
    }

    /// Reference keys of the trained parameters, sorted.
    pub fn trainable_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.trainable.values().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys
    }

    /// `module` ready to learn: every parameter tracked by autodiff, only the trained ones
    /// requiring gradients.
    pub fn train_mode<M: Module>(&self, module: M) -> M {
        let trainable = self.trainable.keys().copied().collect();
        module.map(&mut ToAutodiff { trainable })
    }

    /// `module` back on the plain device, for inference.
    pub fn eval_mode<M: Module>(module: M) -> M {
        module.map(&mut FromAutodiff)
    }

    /// Back-propagates `loss`, clips the global gradient norm and updates the trained
    /// parameters of `module` (in [`AdamW::train_mode`]). Awaits the norm's readback.
    pub async fn step<M: Module>(
        &mut self,
        module: M,
        loss: Tensor<1>,
        want_grads: bool,
    ) -> Result<(M, StepGradients)> {
        self.step_scaled(module, loss, 1.0, want_grads).await
    }

    /// [`Self::step`] with the loss scaled by `loss_scale` for the backward pass and the
    /// gradients unscaled (in f32) before anything reads them: f16 arithmetic's gradients
    /// would otherwise sink into f16's subnormals (the reference's `GradScaler`). A power of
    /// two keeps the unscaling exact.
    pub async fn step_scaled<M: Module>(
        &mut self,
        module: M,
        loss: Tensor<1>,
        loss_scale: f32,
        want_grads: bool,
    ) -> Result<(M, StepGradients)> {
        let gradients = if loss_scale == 1.0 {
            loss.backward()
        } else {
            loss.mul_scalar(loss_scale).backward()
        };
        let mut collector = GradCollector {
            gradients: &gradients,
            trainable: &self.trainable,
            grads: HashMap::new(),
            dims: HashMap::new(),
            unscale: 1.0 / loss_scale,
        };
        module.visit(&mut collector);
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
        let norm = sum_squares.sqrt();
        if !norm.is_finite() {
            return Err(TavError::NonFinite(format!(
                "the gradient norm is {norm} at step {}; lower the learning rate",
                self.steps_done + 1
            )));
        }
        let clip = (self.settings.max_grad_norm / (norm as f64 + 1e-6)).min(1.0);

        let by_key = want_grads.then(|| {
            grads
                .iter()
                .map(|(id, g)| {
                    let (key, layout) = &self.trainable[id];
                    (key.clone(), reference_layout(g.clone(), &dims[id], *layout))
                })
                .collect()
        });

        self.steps_done += 1;
        let mut update = AdamWUpdate {
            optimiser: self,
            grads,
            clip,
        };
        let module = module.map(&mut update);
        Ok((module, StepGradients { norm, by_key }))
    }

    /// The moments by reference key (flat, as kept), for a checkpoint.
    pub fn export_moments(&self) -> BTreeMap<String, (HostTensor, HostTensor)> {
        let host = |t: &Tensor<1>| {
            let data: Vec<f32> = t.clone().try_into_vec_as::<f32>().expect("f32 readback");
            HostTensor::new(vec![data.len()], data)
        };
        self.moments
            .iter()
            .map(|(id, m)| (self.trainable[id].0.clone(), (host(&m.m), host(&m.v))))
            .collect()
    }

    /// Restores the moments and step count of a checkpoint.
    pub fn import_state(
        &mut self,
        moments: &BTreeMap<String, (HostTensor, HostTensor)>,
        steps_done: usize,
        device: &burn::tensor::Device,
    ) -> Result<()> {
        let ids: HashMap<&str, ParamId> = self
            .trainable
            .iter()
            .map(|(id, (k, _))| (k.as_str(), *id))
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

    /// The trained parameters' values by reference key, in PyTorch layout.
    pub async fn values<M: Module>(&self, module: &M) -> Result<BTreeMap<String, HostTensor>> {
        read_values(module, &self.trainable).await
    }
}

/// The values of the parameters in `wanted` (id → key and layout), in PyTorch layout.
pub async fn read_values<M: Module>(
    module: &M,
    wanted: &HashMap<ParamId, (String, Layout)>,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut reader = ValueReader {
        wanted,
        out: Vec::new(),
    };
    module.visit(&mut reader);
    let mut values = BTreeMap::new();
    for (key, layout, flat, dims) in reader.out {
        let failed = |e: String| TavError::Device(format!("reading `{key}` back failed: {e}"));
        let data: Vec<f32> = flat
            .into_data_async()
            .await
            .map_err(|e| failed(format!("{e:?}")))?
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| failed(format!("{e:?}")))?;
        let host = HostTensor::new(dims, data);
        values.insert(key, in_reference_layout(host, layout));
    }
    Ok(values)
}

fn in_reference_layout(host: HostTensor, layout: Layout) -> HostTensor {
    match layout {
        Layout::Same => host,
        Layout::LinearWeight => host.transposed_2d(),
    }
}

/// A flat gradient with burn's `dims` on the host, in PyTorch layout.
fn reference_layout(t: Tensor<1>, dims: &[usize], layout: Layout) -> HostTensor {
    let data: Vec<f32> = t.try_into_vec_as::<f32>().expect("f32 readback");
    in_reference_layout(HostTensor::new(dims.to_vec(), data), layout)
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
    trainable: &'a HashMap<ParamId, (String, Layout)>,
    grads: HashMap<ParamId, Tensor<1>>,
    /// Each gradient's shape as burn holds the parameter.
    dims: HashMap<ParamId, Vec<usize>>,
    /// 1 / the loss scale.
    unscale: f32,
}

impl ModuleVisitor for GradCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.trainable.contains_key(&param.id) {
            return;
        }
        // A parameter without a gradient is skipped by the optimiser, as PyTorch does.
        if let Some(g) = param.val().grad(self.gradients) {
            self.dims.insert(param.id, g.dims().to_vec());
            let g = g.inner().reshape([-1]);
            let g = if self.unscale == 1.0 {
                g
            } else {
                g.mul_scalar(self.unscale)
            };
            self.grads.insert(param.id, g);
        }
    }
}

/// Collects the wanted parameters (flattened, with their burn dims) for reading back.
struct ValueReader<'a> {
    wanted: &'a HashMap<ParamId, (String, Layout)>,
    out: Vec<(String, Layout, Tensor<1>, Vec<usize>)>,
}

impl ModuleVisitor for ValueReader<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some((key, layout)) = self.wanted.get(&param.id) {
            let value = param.val().inner();
            let dims = value.dims().to_vec();
            self.out
                .push((key.clone(), *layout, value.flatten(0, D - 1), dims));
        }
    }
}

/// The update of each parameter that has a gradient.
struct AdamWUpdate<'a> {
    optimiser: &'a mut AdamW,
    grads: HashMap<ParamId, Tensor<1>>,
    clip: f64,
}

impl ModuleMapper for AdamWUpdate<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove(&param.id) else {
            return param;
        };
        let s = self.optimiser.settings;
        let t = self.optimiser.steps_done as i32;
        let id = param.id;
        let value = param.val().inner();
        let dims = value.dims();
        let flat = value.reshape([-1]);
        let grad = grad.mul_scalar(self.clip);
        let moments = self
            .optimiser
            .moments
            .remove(&id)
            .unwrap_or_else(|| Moments {
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
        self.optimiser.moments.insert(id, Moments { m, v });
        Param::initialized(id, updated.reshape(dims).autodiff().require_grad())
    }
}

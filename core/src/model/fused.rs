//! Ops that burn's autodiff would differentiate piece by piece, as one node each with its own
//! backward: attention's softmax, the norms' standardisation and SiLU.
//!
//! Composed, each costs several passes over its tensor forward and more backward (softmax:
//! max, subtract, exp, sum, divide, and a scalar `exp` on burn's CPU backend; a norm: ten
//! passes backward), which on the CPU backends is a large share of a tuning step. Here the
//! forward is the backend's own fused op where it has one, and the backward is the closed
//! form, keeping only what PyTorch keeps.

// burn marks its libtorch backend deprecated; tav's optional `--device torch` uses it.
#![cfg_attr(feature = "libtorch", allow(deprecated))]

#[cfg(feature = "flex")]
use burn::backend::Flex;
#[cfg(feature = "libtorch")]
use burn::backend::LibTorch;
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
#[cfg(feature = "libtorch")]
use burn::backend::libtorch::TchTensor;
use burn::backend::{
    Backend, Cube, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{DType, Tensor};

#[backend_extension(
    Cube,
    Flex: cfg(feature = "flex"),
    LibTorch: cfg(feature = "libtorch"),
    Autodiff
)]
pub trait SoftmaxLastOps: Backend {
    /// Softmax along the last dimension.
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The backend's own softmax (fused where the backend has one).
fn backend_softmax<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let last = x.shape().num_dims() - 1;
    B::softmax(x, last)
}

/// Keeps the output `p`; the input's gradient is `p·(g − Σ_last g·p)`.
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: Backend> Backward<B, 1> for SoftmaxBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            let probs = ops.state;
            let shape = probs.shape();
            let last = shape.num_dims() - 1;
            let weighted = B::float_mul(grad, probs.clone());
            let row_sums = B::float_expand(B::float_sum_dim(weighted.clone(), last), shape);
            let d_x = B::float_sub(weighted, B::float_mul(probs, row_sums));
            grads.register::<B>(node.id, d_x);
        }
    }
}

impl<B: Backend + SoftmaxLastOps, C: CheckpointStrategy> SoftmaxLastOps for Autodiff<B, C> {
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let probs = B::softmax_last(x.into_primitive());
                prep.finish(probs.clone(), probs)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::softmax_last(x.into_primitive())),
        }
    }
}

/// Softmax along the last dimension of `x`, with the fused forward and the one-pass backward.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as SoftmaxLastOps>::softmax_last(
        x.into_dispatch(),
    ))
}

#[backend_extension(
    Cube,
    Flex: cfg(feature = "flex"),
    LibTorch: cfg(feature = "libtorch"),
    Autodiff
)]
pub trait SiluOps: Backend {
    /// `x · sigmoid(x)`.
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The input's gradient from the input and the output's gradient.
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `x · σ(x)` from the backend's ops.
fn composed_silu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_mul(x.clone(), B::sigmoid(x))
}

/// `g · σ(x) · (1 + x·(1 − σ(x)))` from the backend's ops.
fn composed_silu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(x.clone());
    let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
    let inner = B::float_add_scalar(B::float_mul(x, one_minus_s), 1.0.into());
    B::float_mul(grad, B::float_mul(s, inner))
}

/// libtorch has SiLU and its backward as single kernels (the ones PyTorch's autograd uses).
#[cfg(feature = "libtorch")]
impl SiluOps for LibTorch {
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        TchTensor::new(x.tensor.silu())
    }
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        TchTensor::new(x.tensor.silu_backward(&grad.tensor))
    }
}

/// Keeps the input.
#[derive(Debug)]
struct SiluBackward;

impl<B: Backend + SiluOps> Backward<B, 1> for SiluBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::silu_backward(ops.state, grad));
        }
    }
}

impl<B: Backend + SiluOps, C: CheckpointStrategy> SiluOps for Autodiff<B, C> {
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SiluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let out = B::silu(x.clone());
                prep.finish(x, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::silu(x.into_primitive())),
        }
    }
    fn silu_backward(_: FloatTensor<Self>, _: FloatTensor<Self>) -> FloatTensor<Self> {
        unreachable!("silu_backward is called on the inner backend by SiluBackward")
    }
}

/// SiLU (`x · sigmoid(x)`) as one op: the forward and the backward are one kernel each on
/// libtorch, and autodiff keeps the input only.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as SiluOps>::silu(x.into_dispatch()))
}

#[backend_extension(
    Cube,
    Flex: cfg(feature = "flex"),
    LibTorch: cfg(feature = "libtorch"),
    Autodiff
)]
pub trait StandardizeOps: Backend {
    /// `(x − mean) / sqrt(var + eps)`, the statistics over `dims` (f32 input).
    fn standardize(x: FloatTensor<Self>, dims: Vec<usize>, eps: f64) -> FloatTensor<Self>;
}

/// The mean over `dims`, keeping them as size 1.
fn mean_dims<B: Backend>(mut x: FloatTensor<B>, dims: &[usize]) -> FloatTensor<B> {
    for &dim in dims {
        x = B::float_mean_dim(x, dim);
    }
    x
}

/// `y` and `1/σ` (size 1 along `dims`).
fn standardize_forward<B: Backend>(
    x: FloatTensor<B>,
    dims: &[usize],
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let mean = B::float_expand(mean_dims::<B>(x.clone(), dims), shape.clone());
    let centred = B::float_sub(x, mean);
    let var = mean_dims::<B>(B::float_mul(centred.clone(), centred.clone()), dims);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
    let y = B::float_mul(centred, B::float_expand(rstd.clone(), shape));
    (y, rstd)
}

/// Keeps `y` and `1/σ`: `dx = (g − mean(g) − y·mean(g·y)) / σ`, means over the reduced dims.
#[derive(Debug)]
struct StandardizeBackward;

impl<B: Backend> Backward<B, 1> for StandardizeBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            let (y, rstd, dims) = ops.state;
            let shape = y.shape();
            let mean_g = B::float_expand(mean_dims::<B>(grad.clone(), &dims), shape.clone());
            let mean_gy = mean_dims::<B>(B::float_mul(grad.clone(), y.clone()), &dims);
            let y_mean_gy = B::float_mul(y, B::float_expand(mean_gy, shape.clone()));
            let d_y = B::float_sub(B::float_sub(grad, mean_g), y_mean_gy);
            let d_x = B::float_mul(d_y, B::float_expand(rstd, shape));
            grads.register::<B>(node.id, d_x);
        }
    }
}

impl<B: Backend + StandardizeOps, C: CheckpointStrategy> StandardizeOps for Autodiff<B, C> {
    fn standardize(x: FloatTensor<Self>, dims: Vec<usize>, eps: f64) -> FloatTensor<Self> {
        match StandardizeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, rstd) = standardize_forward::<B>(x.into_primitive(), &dims, eps);
                prep.finish((y.clone(), rstd, dims), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::standardize(x.into_primitive(), dims, eps)),
        }
    }
}

/// `(x − mean) / sqrt(var + eps)` with the statistics over `dims` of an f32 tensor, as one
/// autodiff node (the norms' core: GroupNorm over a group's channels, frames and pixels,
/// LayerNorm over the last dimension).
pub fn standardize<const D: usize>(x: Tensor<D>, dims: &[usize], eps: f64) -> Tensor<D> {
    debug_assert_eq!(
        x.dtype(),
        DType::F32,
        "standardize takes the f32 statistics dtype"
    );
    Tensor::from_dispatch(<Dispatch as StandardizeOps>::standardize(
        x.into_dispatch(),
        dims.to_vec(),
        eps,
    ))
}

/// The inner backends' forwards: the backend's own softmax, the standardisation from its ops,
/// and SiLU from its ops except where it has its own kernels (libtorch, above).
macro_rules! forwards_on {
    ($backend:ty) => {
        impl SoftmaxLastOps for $backend {
            fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
                backend_softmax::<Self>(x)
            }
        }
        impl StandardizeOps for $backend {
            fn standardize(x: FloatTensor<Self>, dims: Vec<usize>, eps: f64) -> FloatTensor<Self> {
                standardize_forward::<Self>(x, &dims, eps).0
            }
        }
    };
    ($backend:ty, composed_silu) => {
        forwards_on!($backend);
        impl SiluOps for $backend {
            fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
                composed_silu::<Self>(x)
            }
            fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
                composed_silu_backward::<Self>(x, grad)
            }
        }
    };
}
forwards_on!(Cube, composed_silu);
#[cfg(feature = "flex")]
forwards_on!(Flex, composed_silu);
#[cfg(feature = "libtorch")]
forwards_on!(LibTorch);

#[cfg(test)]
mod tests {
    use burn::tensor::activation;
    use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

    use super::{silu, softmax_last, standardize};

    /// burn's composed ops, differentiated op by op: what the fused ops must agree with.
    fn composed_standardize(x: Tensor<4>, dims: &[usize], eps: f64) -> Tensor<4> {
        let mean = x.clone().mean_dims(dims);
        let centred = x - mean;
        let var = centred.clone().square().mean_dims(dims);
        centred / var.add_scalar(eps).sqrt()
    }

    fn devices() -> Vec<Device> {
        let mut devices = vec![Device::wgpu(DeviceKind::DefaultDevice)];
        #[cfg(feature = "flex")]
        devices.push(Device::flex());
        devices
    }

    /// Output and input gradient (of `Σ out·w`, `w` random) of `op`, on `device` with autodiff.
    fn value_and_grad(
        op: &dyn Fn(Tensor<4>) -> Tensor<4>,
        x: &Tensor<4>,
        w: &Tensor<4>,
        device: &Device,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = Tensor::<4>::from_data(x.to_data(), &device.clone().autodiff()).require_grad();
        let w = Tensor::<4>::from_data(w.to_data(), &device.clone().autodiff());
        let out = op(x.clone());
        let grads = (out.clone() * w).sum().backward();
        let grad = x.grad(&grads).expect("x is tracked");
        let values = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().expect("f32");
        (values(out.inner()), values(grad))
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(g.is_finite(), "{what}[{i}] is {g}");
            assert!(
                (g - w).abs() <= 2e-5 * scale,
                "{what}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
        assert_eq!(got.len(), want.len(), "{what}: lengths");
    }

    /// Each fused op against burn's composed ops, forward and backward, over shapes that
    /// sweep row lengths (odd, one, wider than a SIMD register), reduced dimension sets and
    /// value ranges, on wgpu (lavapipe here) and burn's CPU backend.
    #[test]
    fn fused_ops_match_the_composed_ops_forward_and_backward() {
        let shapes: [[usize; 4]; 4] = [[2, 3, 5, 7], [1, 4, 1, 33], [3, 2, 8, 16], [2, 1, 3, 1]];
        for device in devices() {
            for shape in shapes {
                for range in [1.0, 8.0] {
                    let x =
                        Tensor::<4>::random(shape, Distribution::Uniform(-range, range), &device);
                    let w = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
                    let case =
                        |what: &str,
                         fused: &dyn Fn(Tensor<4>) -> Tensor<4>,
                         composed: &dyn Fn(Tensor<4>) -> Tensor<4>| {
                            let (out, grad) = value_and_grad(fused, &x, &w, &device);
                            let (out_c, grad_c) = value_and_grad(composed, &x, &w, &device);
                            let name = format!("{what} {shape:?} ±{range} on {device:?}");
                            assert_close(&format!("{name}: output"), &out, &out_c);
                            assert_close(&format!("{name}: gradient"), &grad, &grad_c);
                        };
                    case("softmax", &softmax_last, &|x| activation::softmax(x, 3));
                    case("silu", &silu, &activation::silu);
                    for dims in [&[3][..], &[1, 3], &[1, 2, 3]] {
                        let name = format!("standardize over {dims:?}");
                        case(&name, &|x| standardize(x, dims, 1e-5), &|x| {
                            composed_standardize(x, dims, 1e-5)
                        });
                    }
                }
            }
        }
    }
}

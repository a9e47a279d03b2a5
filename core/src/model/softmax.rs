//! Softmax over the last dimension as one op in each direction, for attention's scores.
//!
//! burn's autodiff has no softmax of its own: it differentiates the composed ops (max, subtract,
//! exp, sum, divide), which on the CPU backends is five passes over the score matrix forward,
//! more backward, and a scalar `exp` on burn's CPU backend. Here the forward is the backend's
//! own fused softmax (vectorised on flex and libtorch) and the backward is
//! `dx = p·(g − Σ g·p)`, keeping only the output `p`, as PyTorch's softmax does.

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
use burn::backend::{
    Backend, Cube, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;

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

impl SoftmaxLastOps for Cube {
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        backend_softmax::<Self>(x)
    }
}

#[cfg(feature = "flex")]
impl SoftmaxLastOps for Flex {
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        backend_softmax::<Self>(x)
    }
}

#[cfg(feature = "libtorch")]
#[allow(deprecated)] // burn marks its libtorch backend deprecated; tav's `--device torch` uses it
impl SoftmaxLastOps for LibTorch {
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        backend_softmax::<Self>(x)
    }
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

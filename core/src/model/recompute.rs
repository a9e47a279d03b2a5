//! Block-level recompute for tuning: a UNet block (a ResNet block, a video transformer) keeps
//! only its input for the backward pass. Its forward runs once without autodiff; in the
//! backward pass it runs again, tracked, from the saved input, and that small graph's
//! gradients flow on to the block's input and to its trainable parameters.
//!
//! Unlike the reference's gradient checkpointing (which, with a frozen input, leaves the first
//! down blocks' layers without gradients), a block whose input needs no gradient still gets
//! its parameters' gradients: the op is tracked whenever the block has trainable parameters.
//!
//! Only on wgpu (burn's cubecl backend) with autodiff; elsewhere the block runs as written.

use std::sync::Arc;

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Cube, tensor::FloatTensor};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::kernels::runs_wgsl;

type Tracked = FloatTensor<Autodiff<Cube>>;
type Plain = FloatTensor<Cube>;
type Forward<const D: usize> = Arc<dyn Fn(Tensor<D>) -> Tensor<D> + Send + Sync>;

/// Inputs a block reads besides its main input (the time embedding, the text): they need no
/// gradient, and the untracked forward takes them without autodiff.
pub trait SideInput: Clone + Send + Sync + 'static {
    fn untracked(self) -> Self;
}

impl<const D: usize> SideInput for Tensor<D> {
    fn untracked(self) -> Self {
        self.inner()
    }
}

impl SideInput for usize {
    fn untracked(self) -> Self {
        self
    }
}

impl SideInput for bool {
    fn untracked(self) -> Self {
        self
    }
}

impl SideInput for u64 {
    fn untracked(self) -> Self {
        self
    }
}

impl<A: SideInput, B: SideInput> SideInput for (A, B) {
    fn untracked(self) -> Self {
        (self.0.untracked(), self.1.untracked())
    }
}

impl<A: SideInput, B: SideInput, C: SideInput> SideInput for (A, B, C) {
    fn untracked(self) -> Self {
        (self.0.untracked(), self.1.untracked(), self.2.untracked())
    }
}

impl<T: SideInput> SideInput for Option<T> {
    fn untracked(self) -> Self {
        self.map(SideInput::untracked)
    }
}

/// `forward(module, x, side)` with only `x` kept for the backward pass, when `x` is on an
/// autodiff wgpu device; otherwise `forward` as it is. `side` must not need gradients.
pub fn recompute<M, S, const D: usize>(
    module: &M,
    x: Tensor<D>,
    side: S,
    forward: fn(&M, Tensor<D>, S) -> Tensor<D>,
) -> Tensor<D>
where
    M: Module + Clone + Send + Sync + 'static,
    S: SideInput,
{
    if !x.is_autodiff() || !runs_wgsl(&x.device()) {
        return forward(module, x, side);
    }
    let Ok(x_tracked) = x.clone().try_into_primitive::<Autodiff<Cube>>() else {
        // Another checkpointing strategy or backend: no recompute.
        return forward(module, x, side);
    };
    let mut trainable = TrainableParams(Vec::new());
    module.visit(&mut trainable);
    // The second parent makes the op tracked when only the parameters need gradients: a
    // fresh leaf that requires one (nothing is ever registered for it). Without trainable
    // parameters, `x` alone decides.
    let anchor = if trainable.0.is_empty() {
        x_tracked.clone()
    } else {
        Tensor::<1>::zeros([1], &x.device())
            .require_grad()
            .try_into_primitive::<Autodiff<Cube>>()
            .expect("a leaf on the same device as the block input")
    };
    let untracked_module = module.clone().map(&mut WithoutAutodiff);
    let untracked_side = side.clone().untracked();
    let tracked_module = module.clone();
    let block = Block {
        tracked: Arc::new(move |x| forward(&tracked_module, x, side.clone())),
        untracked: Arc::new(move |x| forward(&untracked_module, x, untracked_side.clone())),
        params: trainable.0,
    };
    Tensor::from_primitive::<Autodiff<Cube>>(recomputed(x_tracked, anchor, block))
}

/// The block twice over: on the tracked parameters (backward) and on plain copies (forward).
#[derive(Clone)]
struct Block<const D: usize> {
    tracked: Forward<D>,
    untracked: Forward<D>,
    /// The block's parameters that require gradients.
    params: Vec<Tracked>,
}

impl<const D: usize> std::fmt::Debug for Block<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block {{ {} trainable parameters }}", self.params.len())
    }
}

#[derive(Debug, Clone)]
struct Saved<const D: usize> {
    /// The block's input.
    x: Plain,
    block: Block<D>,
}

#[derive(Debug)]
struct RecomputeBackward<const D: usize>;

fn recomputed<const D: usize>(x: Tracked, anchor: Tracked, block: Block<D>) -> Tracked {
    let prep = RecomputeBackward::<D>
        .prepare::<NoCheckpointing>([x.node(), anchor.node()])
        .compute_bound()
        .stateful();
    let x = x.into_primitive();
    let out = run(&block.untracked, x.clone());
    match prep {
        OpsKind::Tracked(prep) => prep.finish(Saved { x, block }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The untracked forward on a plain wgpu tensor.
fn run<const D: usize>(forward: &Forward<D>, x: Plain) -> Plain {
    let out = forward(Tensor::from_primitive::<Cube>(x));
    out.try_into_primitive::<Cube>()
        .expect("the untracked block forward stays on the wgpu backend without autodiff")
}

impl<const D: usize> Backward<Cube, 2> for RecomputeBackward<D> {
    type State = Saved<D>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, _anchor] = ops.parents;
        let d_out = grads.consume::<Cube>(&ops.node);
        let Saved { x, block } = ops.state;
        // The block again, tracked, from its saved input: a graph of its own, whose backward
        // runs inside this one (burn keeps one lock per graph).
        let x_leaf = Tracked::new(x).require_grad();
        let out = (block.tracked)(Tensor::from_primitive::<Autodiff<Cube>>(x_leaf.clone()));
        let d_out = Tensor::<D>::from_primitive::<Cube>(d_out);
        let loss = (out * d_out).sum();
        let inner = loss
            .try_into_primitive::<Autodiff<Cube>>()
            .expect("the recomputed block is tracked")
            .backward();
        if let Some(node) = node_x
            && let Some(d_x) = x_leaf.grad(&inner)
        {
            grads.register::<Cube>(node.id, d_x);
        }
        for param in &block.params {
            if let Some(d_param) = param.grad(&inner) {
                grads.register::<Cube>(param.id(), d_param);
            }
        }
    }
}

/// The parameters of a module that require gradients, as wgpu autodiff tensors.
struct TrainableParams(Vec<Tracked>);

impl ModuleVisitor for TrainableParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if value.is_require_grad()
            && let Ok(tracked) = value.try_into_primitive::<Autodiff<Cube>>()
        {
            self.0.push(tracked);
        }
    }
}

/// A module's parameters without autodiff (same buffers).
struct WithoutAutodiff;

impl ModuleMapper for WithoutAutodiff {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        Param::initialized(id, param.val().inner())
    }
}

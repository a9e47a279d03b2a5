//! The WGSL attention kernels of `tav-shaders`, wired into burn as a backend extension with
//! a hand-written backward, so the model and the tuning loop use them through one switch
//! (`VideoAttentionOptions::kernels`). Sparse-causal and temporal attention then read K/V in
//! place and never store a score matrix, in the forward or the backward pass.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{
    AutodiffBackend, Backend, Cube, Dispatch, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{kernel::into_contiguous, tensor::CubeTensor};
use cubecl::ir::attributes::BufferIOAttr;
use cubecl::ir::features::Plane;
use cubecl::ir::{UIntKind, metadata::Info as KernelInfo};
use cubecl::prelude::*;
use cubecl::server::{KernelArguments, MetadataBindingInfo};
use cubecl::{CubeKernel, PrecompiledSource};
pub use tav_shaders::Tiling;
use tav_shaders::{
    Access, AttentionMode, Capabilities, ConvInfo, GegluInfo, Info, Kernel, LANE_VECS,
    MAX_HEAD_DIM, Slot, Storage, Variant, WIDEN_F16, WidenInfo, conv2d_source, geglu_source,
    source,
};

/// Largest head size the attention kernels take.
pub const MAX_KERNEL_HEAD_DIM: usize = MAX_HEAD_DIM;

/// A kernel given as WGSL text; cubecl caches pipelines by id, so the id covers the text.
struct WgslKernel {
    source: &'static str,
}

impl KernelMetadata for WgslKernel {
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(("main", self.source))
    }

    fn address_type(&self) -> ElemType {
        UIntKind::U32.into()
    }
}

impl CubeKernel for WgslKernel {
    fn define(&self) -> KernelDefinition {
        // Precompiled kernels are never compiled from this; it only keys caches.
        let settings = KernelSettings::new(
            CubeDim::new_single().0,
            ExecutionMode::Checked,
            AddressType::U32,
        );
        KernelDefinition {
            body: Scope::root(settings.clone()),
            settings,
            info: KernelInfo::default(),
        }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource {
            source: self.source.to_string(),
            entrypoint_name: "main".to_string(),
            lang: "wgsl",
        })
    }
}

/// A WGSL kernel tav launches, by family and variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    /// An attention kernel's pipeline variant (head size, lanes per row, mode).
    Attention(Variant),
    /// GEGLU, forward or backward.
    Geglu { backward: bool },
    /// The convolution, forward or the input's gradient.
    Conv2d { backward: bool },
}

/// Each kernel's source, built once per variant and storage type and kept for the process
/// (cubecl caches pipelines by source; the variants are few).
fn kernel_source(kernel: Source, storage: Storage) -> &'static str {
    type Sources = HashMap<(Source, Storage), &'static str>;
    static SOURCES: OnceLock<Mutex<Sources>> = OnceLock::new();
    let mut sources = SOURCES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    sources.entry((kernel, storage)).or_insert_with(|| {
        let text = match kernel {
            Source::Attention(variant) => source(variant, storage),
            Source::Geglu { backward } => geglu_source(backward, storage),
            Source::Conv2d { backward } => conv2d_source(backward, storage),
        };
        Box::leak(text.into_boxed_str())
    })
}

/// What one attention call computes: `frames` per video, `heads` heads, which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSpec {
    pub frames: usize,
    pub heads: usize,
    pub temporal: bool,
}

impl AttentionSpec {
    fn info(&self, q: &CubeTensor) -> Info {
        let dims = q.meta.shape().dims::<3>().to_vec();
        self.info_for(dims[0] / self.frames, dims[1], dims[2] / self.heads)
    }

    /// The kernels' uniform block for `videos` videos of `tokens` tokens and heads of
    /// `head_dim`.
    fn info_for(&self, videos: usize, tokens: usize, head_dim: usize) -> Info {
        Info {
            videos: videos as u32,
            frames: self.frames as u32,
            tokens: tokens as u32,
            heads: self.heads as u32,
            head_dim: head_dim as u32,
            mode: if self.temporal {
                AttentionMode::Temporal
            } else {
                AttentionMode::SparseCausal
            },
            scale: (head_dim as f32).powf(-0.5),
            rows_per_dispatch_x: 65_535,
            item_start: 0,
            item_end: u32::MAX,
            first_pass: true,
            last_pass: true,
        }
    }
}

/// A uniform block's bytes as the little-endian u64 words cubecl binds.
fn uniform_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect()
}

fn storage_of(t: &CubeTensor) -> Storage {
    match t.dtype {
        DType::F16 => Storage::F16,
        DType::F32 => Storage::F32,
        other => panic!("the attention kernels take f32 or f16 tensors, not {other:?}"),
    }
}

fn empty(like: &CubeTensor, dims: Vec<usize>, dtype: DType) -> CubeTensor {
    let shape = Shape::from(dims);
    let handle = like.client.empty(shape.num_elements() * dtype.size());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        dtype,
    )
}

/// Runs the forward or backward plan of `info` (its passes: one on a GPU, several on
/// llvmpipe, whose loops stop silently past 65,535 iterations) on `buffers` by slot, with the
/// plan's scratch (between-pass state, frame 0's partial sums).
fn run_plan(info: &Info, backward: bool, storage: Storage, buffers: &[(Slot, &CubeTensor)]) {
    let like = buffers[0].1;
    let plan = info.plan(backward, tiling(), &capabilities(like));
    let state = empty(like, vec![plan.state_elements], DType::F32);
    let partials = empty(like, vec![plan.partial_elements], DType::F32);
    let mut all = buffers.to_vec();
    all.extend([(Slot::State, &state), (Slot::Partials, &partials)]);
    for launch in &plan.launches {
        let bound: Vec<_> = launch
            .kernel
            .slots()
            .iter()
            .map(|&(slot, access)| {
                let tensor = all
                    .iter()
                    .find(|(s, _)| *s == slot)
                    .map(|(_, t)| *t)
                    .expect("every slot of the plan is given");
                let io = match access {
                    Access::Read => BufferIOAttr::ReadOnly,
                    Access::Write => BufferIOAttr::WriteOnly,
                    Access::ReadWrite => BufferIOAttr::ReadWrite,
                };
                (tensor, io)
            })
            .collect();
        launch_wgsl(
            kernel_source(Source::Attention(launch.variant()), storage),
            &bound,
            &launch.info.to_bytes(),
            launch.dispatch(),
        );
    }
}

/// What `like`'s adapter offers the attention plans: llvmpipe's loop budget, and subgroups
/// where cubecl reports plane operations (GPUs with subgroups) or [`use_subgroups`] said so.
fn capabilities(like: &CubeTensor) -> Capabilities {
    let properties = like.client.properties();
    let registered = subgroup_registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&format!("{:?}", like.device))
        .copied();
    let from_cubecl = properties
        .features
        .plane
        .contains(Plane::Ops)
        .then_some(properties.hardware.plane_size_min);
    Capabilities {
        loop_budget: tav_shaders::loop_budget(&properties.identity.name),
        subgroup_size: registered.unwrap_or(from_cubecl),
        lane_vecs: LANE_VECS,
    }
}

/// Subgroup sizes by device, as registered by [`use_subgroups`].
fn subgroup_registry() -> &'static Mutex<HashMap<String, Option<u32>>> {
    static SUBGROUPS: OnceLock<Mutex<HashMap<String, Option<u32>>>> = OnceLock::new();
    SUBGROUPS.get_or_init(Default::default)
}

/// Says whether `device` was opened with subgroup operations, and its smallest subgroup
/// (from the adapter, which whoever opened the device has): the tiled attention kernels
/// then split large heads over several invocations (`None`: they never do). cubecl reports
/// subgroups itself for GPUs, not for CPU adapters such as llvmpipe, which have them too.
pub fn use_subgroups(device: &burn::tensor::Device, min_subgroup_size: Option<u32>) {
    subgroup_registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(format!("{:?}", probe(device).device), min_subgroup_size);
}

/// Which forward kernel `spec` runs on `device` for `tokens` tokens and heads of `head_dim`,
/// for reports: `Some(lanes)` (invocations per row, 1 without subgroups) for the tiled
/// kernel, `None` for the per-row one.
pub fn tiled_forward_lanes(
    device: &burn::tensor::Device,
    spec: AttentionSpec,
    tokens: usize,
    head_dim: usize,
) -> Option<usize> {
    let info = spec.info_for(1, tokens, head_dim);
    (info.kernels(false, tiling()) == [Kernel::TiledForward])
        .then(|| capabilities(&probe(device)).lanes(Kernel::TiledForward, head_dim))
}

/// A one-element tensor on `device` (without autodiff), for its cubecl client and device.
fn probe(device: &burn::tensor::Device) -> CubeTensor {
    cube(Tensor::<1>::zeros([1], &device.clone().without_autodiff()))
}

/// Which kernels attention runs: the tiled ones, unless [`set_tiling`] chose
/// the per-row ones (kept as a second reference, and timed by `tav bench --kernel attention
/// --tiling rows`).
fn tiling() -> Tiling {
    match TILING.get() {
        Some(t) => *t,
        None => Tiling::Tiled,
    }
}

static TILING: OnceLock<Tiling> = OnceLock::new();

/// Chooses the attention kernels for this process (first call wins): for timing the
/// per-row kernels against the tiled ones. Returns false if another choice was made first.
pub fn set_tiling(tiling: Tiling) -> bool {
    TILING.set(tiling).is_ok() || TILING.get() == Some(&tiling)
}

/// Launches a WGSL kernel on `buffers` (in binding order) with `uniform` bound after them,
/// over a 2-D grid of `[x, y]` workgroups.
fn launch_wgsl(
    source: &'static str,
    buffers: &[(&CubeTensor, BufferIOAttr)],
    uniform: &[u8],
    [x, y]: [u32; 2],
) {
    let mut args = KernelArguments::new();
    for (t, io) in buffers {
        args = args.with_buffer_io(t.handle.clone().binding(), *io);
    }
    let args = args.with_info(MetadataBindingInfo::custom(uniform_words(uniform)));
    buffers[0].0.client.launch(
        Box::new(WgslKernel { source }),
        CubeCount::Static(x, y, 1),
        args,
    );
}

/// Forward: the output and each row's log-sum-exp (kept for the backward pass).
fn forward(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    spec: AttentionSpec,
) -> (CubeTensor, CubeTensor) {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let info = spec.info(&q);
    let storage = storage_of(&q);
    let out = empty(&q, q.meta.shape().dims::<3>().to_vec(), q.dtype);
    let lse = empty(&q, vec![info.rows()], DType::F32);
    run_plan(
        &info,
        false,
        storage,
        &[
            (Slot::Q, &q),
            (Slot::K, &k),
            (Slot::V, &v),
            (Slot::Out, &out),
            (Slot::Lse, &lse),
        ],
    );
    (out, lse)
}

/// Backward: dq (with delta), then dk and dv gathered per key.
fn backward(saved: Saved, d_out: CubeTensor) -> (CubeTensor, CubeTensor, CubeTensor) {
    let Saved {
        q,
        k,
        v,
        out,
        lse,
        spec,
    } = saved;
    let d_out = into_contiguous(d_out);
    let info = spec.info(&q);
    let storage = storage_of(&q);
    let dims = q.meta.shape().dims::<3>().to_vec();
    let (d_q, d_k, d_v) = (
        empty(&q, dims.clone(), q.dtype),
        empty(&q, dims.clone(), q.dtype),
        empty(&q, dims, q.dtype),
    );
    let delta = empty(&q, vec![info.rows()], DType::F32);
    run_plan(
        &info,
        true,
        storage,
        &[
            (Slot::Q, &q),
            (Slot::K, &k),
            (Slot::V, &v),
            (Slot::Out, &out),
            (Slot::DOut, &d_out),
            (Slot::Lse, &lse),
            (Slot::DQ, &d_q),
            (Slot::Delta, &delta),
            (Slot::DK, &d_k),
            (Slot::DV, &d_v),
        ],
    );
    (d_q, d_k, d_v)
}

/// What the backward pass keeps: inputs, output and log-sum-exp (no score matrix).
#[derive(Debug, Clone)]
struct Saved {
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    out: CubeTensor,
    lse: CubeTensor,
    spec: AttentionSpec,
}

#[backend_extension(Cube, Autodiff)]
pub trait VideoAttentionOps: Backend {
    /// Sparse-causal (`temporal = false`) or temporal attention of `[(B·F), L, H·D]` q/k/v.
    fn video_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        frames: usize,
        heads: usize,
        temporal: bool,
    ) -> FloatTensor<Self>;
}

impl VideoAttentionOps for Cube {
    fn video_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        frames: usize,
        heads: usize,
        temporal: bool,
    ) -> FloatTensor<Self> {
        forward(
            q,
            k,
            v,
            AttentionSpec {
                frames,
                heads,
                temporal,
            },
        )
        .0
    }
}

#[derive(Debug)]
struct VideoAttentionBackward;

impl Backward<Cube, 3> for VideoAttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_out = grads.consume::<Cube>(&ops.node);
        let (d_q, d_k, d_v) = backward(ops.state, d_out);
        if let Some(node) = node_q {
            grads.register::<Cube>(node.id, d_q);
        }
        if let Some(node) = node_k {
            grads.register::<Cube>(node.id, d_k);
        }
        if let Some(node) = node_v {
            grads.register::<Cube>(node.id, d_v);
        }
    }
}

impl<C: CheckpointStrategy> VideoAttentionOps for Autodiff<Cube, C> {
    fn video_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        frames: usize,
        heads: usize,
        temporal: bool,
    ) -> FloatTensor<Self> {
        let spec = AttentionSpec {
            frames,
            heads,
            temporal,
        };
        match VideoAttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (
                    into_contiguous(q.into_primitive()),
                    into_contiguous(k.into_primitive()),
                    into_contiguous(v.into_primitive()),
                );
                let (out, lse) = forward(q.clone(), k.clone(), v.clone(), spec);
                let saved = Saved {
                    q,
                    k,
                    v,
                    out: out.clone(),
                    lse,
                    spec,
                };
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                forward(
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                    spec,
                )
                .0,
            ),
        }
    }
}

/// Whether `device` runs WGSL (a cubecl device, wgpu here). tav's kernels exist only there;
/// on burn's CPU backend (`flex`) the plain tensor-op path runs instead.
pub fn runs_wgsl(device: &burn::tensor::Device) -> bool {
    use burn::backend::DispatchDevice;
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Cube(_)
    )
}

/// Whether the kernels can run `q` (`[(B·F), L, H·D]`, f32 or f16, head size within the
/// kernels' limit) on its device.
pub fn supported(q: &Tensor<3>, heads: usize) -> bool {
    let [_, _, width] = q.dims();
    matches!(q.dtype(), DType::F32 | DType::F16)
        && width / heads <= MAX_HEAD_DIM
        && runs_wgsl(&q.device())
}

/// Sparse-causal (`temporal = false`) or temporal attention through the WGSL kernels.
/// q, k, v are the projections `[(B·F), L, H·D]`; the result has the same shape.
pub fn video_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    frames: usize,
    heads: usize,
    temporal: bool,
) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as VideoAttentionOps>::video_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        frames,
        heads,
        temporal,
    ))
}

/// f16 → f32 on the GPU by `unpack2x16float`, which needs no `shader-f16`: element i of the
/// storage goes to element i of an f32 buffer, and the view (shape, strides) is kept.
fn widen_f16(x: CubeTensor) -> CubeTensor {
    assert_eq!(x.dtype, DType::F16, "widen_f16 takes f16 tensors");
    // Storage elements behind the view: the buffer may be a strided view's.
    let count = (x.handle.size() / 2) as usize;
    let handle = x.client.empty(count * 4);
    let wide = CubeTensor::new(
        x.client.clone(),
        handle,
        (*x.meta).clone(),
        x.device.clone(),
        DType::F32,
    );
    let info = WidenInfo {
        count: count as u32,
    };
    launch_wgsl(
        WIDEN_F16,
        &[
            (&x, BufferIOAttr::ReadOnly),
            (&wide, BufferIOAttr::WriteOnly),
        ],
        &info.to_bytes(),
        info.dispatch(),
    );
    wide
}

#[backend_extension(Cube, Autodiff)]
pub trait WidenF16Ops: Backend {
    /// An f16 tensor as f32, through a kernel that needs no `shader-f16`.
    fn widen_f16(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl WidenF16Ops for Cube {
    fn widen_f16(x: FloatTensor<Self>) -> FloatTensor<Self> {
        widen_f16(x)
    }
}

impl<C: CheckpointStrategy> WidenF16Ops for Autodiff<Cube, C> {
    /// Frozen weights only: the result is a constant of the graph (no gradient flows back).
    fn widen_f16(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(widen_f16(<Self as AutodiffBackend>::inner(x)))
    }
}

/// `x` (f16) as f32, without `shader-f16`: adapters without f16 arithmetic keep weights in
/// f16 and widen each where it is used. Not differentiable: for frozen weights.
pub fn widen_f16_to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as WidenF16Ops>::widen_f16(x.into_dispatch()))
}

/// `[…, 2W]` → (rows, W).
fn geglu_sizes(dims: &[usize]) -> (usize, usize) {
    let wide = *dims.last().expect("a tensor has dimensions");
    let rows = dims.iter().product::<usize>() / wide.max(1);
    (rows, wide / 2)
}

/// `inputs` then one output, the projection's storage type.
fn launch_geglu(backward: bool, info: GegluInfo, inputs: &[&CubeTensor], output: &CubeTensor) {
    let buffers: Vec<_> = inputs
        .iter()
        .map(|&t| (t, BufferIOAttr::ReadOnly))
        .chain([(output, BufferIOAttr::WriteOnly)])
        .collect();
    launch_wgsl(
        kernel_source(Source::Geglu { backward }, storage_of(inputs[0])),
        &buffers,
        &info.to_bytes(),
        info.dispatch(),
    );
}

/// `hidden · gelu(gate)` of a contiguous projection `[…, 2W]` (hidden ‖ gate): `[…, W]`.
fn geglu_forward(projected: CubeTensor) -> CubeTensor {
    let dims = projected.meta.shape().to_vec();
    let (rows, width) = geglu_sizes(&dims);
    let info = GegluInfo::new(rows, width).expect("checked by `geglu_supported`");
    let mut out_dims = dims;
    *out_dims.last_mut().expect("a tensor has dimensions") = width;
    let gated = empty(&projected, out_dims, projected.dtype);
    launch_geglu(false, info, &[&projected], &gated);
    gated
}

/// The projection's gradient from the projection and the output's gradient.
fn geglu_backward(projected: CubeTensor, d_gated: CubeTensor) -> CubeTensor {
    let d_gated = into_contiguous(d_gated);
    let dims = projected.meta.shape().to_vec();
    let (rows, width) = geglu_sizes(&dims);
    let info = GegluInfo::new(rows, width).expect("checked by `geglu_supported`");
    let d_projected = empty(&projected, dims, projected.dtype);
    launch_geglu(true, info, &[&projected, &d_gated], &d_projected);
    d_projected
}

#[backend_extension(Cube, Autodiff)]
pub trait GegluOps: Backend {
    /// `hidden · gelu(gate)` of a projection `[…, 2W]` whose last dimension is hidden ‖ gate.
    fn geglu(projected: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl GegluOps for Cube {
    fn geglu(projected: FloatTensor<Self>) -> FloatTensor<Self> {
        geglu_forward(into_contiguous(projected))
    }
}

/// GEGLU's backward keeps the projection only (no GELU output, no erf temporaries).
#[derive(Debug)]
struct GegluBackward;

impl Backward<Cube, 1> for GegluBackward {
    type State = CubeTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let d_gated = grads.consume::<Cube>(&ops.node);
        if let Some(node) = node {
            grads.register::<Cube>(node.id, geglu_backward(ops.state, d_gated));
        }
    }
}

impl<C: CheckpointStrategy> GegluOps for Autodiff<Cube, C> {
    fn geglu(projected: FloatTensor<Self>) -> FloatTensor<Self> {
        match GegluBackward
            .prepare::<C>([projected.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let projected = into_contiguous(projected.into_primitive());
                let gated = geglu_forward(projected.clone());
                prep.finish(projected, gated)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(geglu_forward(into_contiguous(projected.into_primitive())))
            }
        }
    }
}

/// Whether the GEGLU kernels can take `projected` (`[…, 2W]`, f32 or f16) on its device.
pub fn geglu_supported<const D: usize>(projected: &Tensor<D>) -> bool {
    let (rows, width) = geglu_sizes(&projected.dims());
    matches!(projected.dtype(), DType::F32 | DType::F16)
        && projected.dims()[D - 1].is_multiple_of(2)
        && GegluInfo::new(rows, width).is_some()
        && runs_wgsl(&projected.device())
}

/// GEGLU as one op: `hidden · gelu(gate)` of the feed-forward's projection `[…, 2W]`
/// (hidden ‖ gate along the last dimension), through one kernel each way. Autodiff keeps the
/// projection only, where the composed ops keep the GELU's input and output too and allocate
/// its erf temporaries; the backward uses GELU's exact derivative (burn's is the tanh
/// approximation's).
pub fn geglu<const D: usize>(projected: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GegluOps>::geglu(projected.into_dispatch()))
}

/// A plain (untracked) wgpu tensor's primitive, for the kernels timed alone.
fn cube<const D: usize>(t: Tensor<D>) -> CubeTensor {
    t.try_into_primitive::<Cube>()
        .expect("the attention kernels run on a plain wgpu tensor")
}

/// The attention kernels' forward alone on plain wgpu tensors `[(B·F), L, H·D]`: the output
/// and each row's log-sum-exp. For timing the kernels by themselves (`tav bench --kernel`).
pub fn attention_forward_only(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    spec: AttentionSpec,
) -> (Tensor<3>, Tensor<1>) {
    let (out, lse) = forward(cube(q), cube(k), cube(v), spec);
    (
        Tensor::from_primitive::<Cube>(out),
        Tensor::from_primitive::<Cube>(lse),
    )
}

/// The attention kernels' backward alone (dq, then dk and dv), from the forward's output and
/// log-sum-exp ([`attention_forward_only`]).
pub fn attention_backward_only(
    [q, k, v, out, d_out]: [Tensor<3>; 5],
    lse: Tensor<1>,
    spec: AttentionSpec,
) -> [Tensor<3>; 3] {
    let saved = Saved {
        q: into_contiguous(cube(q)),
        k: into_contiguous(cube(k)),
        v: into_contiguous(cube(v)),
        out: into_contiguous(cube(out)),
        lse: cube(lse),
        spec,
    };
    let (d_q, d_k, d_v) = backward(saved, cube(d_out));
    [d_q, d_k, d_v].map(Tensor::from_primitive::<Cube>)
}

/// What one convolution computes: stride and zero padding (top, left, bottom, right); the
/// kernel is square.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: usize,
    pub padding: [usize; 4],
}

impl ConvSpec {
    /// The kernels' uniform block for input `[N, C_in, H, W]` and weight `[C_out, C_in, K, K]`.
    pub fn info(&self, input: &[usize], weight: &[usize], has_bias: bool) -> ConvInfo {
        let [top, left, bottom, right] = self.padding;
        let k = weight[2];
        let out = |size: usize, before: usize, after: usize| {
            (size + before + after - k) / self.stride + 1
        };
        ConvInfo {
            batch: input[0] as u32,
            c_in: input[1] as u32,
            c_out: weight[0] as u32,
            in_h: input[2] as u32,
            in_w: input[3] as u32,
            out_h: out(input[2], top, bottom) as u32,
            out_w: out(input[3], left, right) as u32,
            kernel: k as u32,
            stride: self.stride as u32,
            pad_top: top as u32,
            pad_left: left as u32,
            has_bias,
        }
    }
}

fn conv2d_forward(
    x: CubeTensor,
    weight: CubeTensor,
    bias: Option<CubeTensor>,
    spec: ConvSpec,
) -> CubeTensor {
    let (x, weight) = (into_contiguous(x), into_contiguous(weight));
    let info = spec.info(x.meta.shape(), weight.meta.shape(), bias.is_some());
    let dims = vec![
        info.batch as usize,
        info.c_out as usize,
        info.out_h as usize,
        info.out_w as usize,
    ];
    let out = empty(&x, dims, x.dtype);
    let bias = bias.map(into_contiguous).unwrap_or_else(|| weight.clone());
    launch_wgsl(
        kernel_source(Source::Conv2d { backward: false }, storage_of(&x)),
        &[
            (&x, BufferIOAttr::ReadOnly),
            (&weight, BufferIOAttr::ReadOnly),
            (&bias, BufferIOAttr::ReadOnly),
            (&out, BufferIOAttr::WriteOnly),
        ],
        &info.to_bytes(false).expect("checked by `conv2d_supported`"),
        info.dispatch(false),
    );
    out
}

fn conv2d_backward_data(
    d_out: CubeTensor,
    weight: CubeTensor,
    input_dims: Vec<usize>,
    spec: ConvSpec,
) -> CubeTensor {
    let d_out = into_contiguous(d_out);
    let info = spec.info(&input_dims, weight.meta.shape(), false);
    let d_x = empty(&d_out, input_dims, d_out.dtype);
    launch_wgsl(
        kernel_source(Source::Conv2d { backward: true }, storage_of(&d_out)),
        &[
            (&d_out, BufferIOAttr::ReadOnly),
            (&weight, BufferIOAttr::ReadOnly),
            (&d_x, BufferIOAttr::WriteOnly),
        ],
        &info.to_bytes(true).expect("checked by `conv2d_supported`"),
        info.dispatch(true),
    );
    d_x
}

#[backend_extension(Cube, Autodiff)]
pub trait Conv2dF32SumOps: Backend {
    /// 2-D convolution of `[N, C_in, H, W]` by frozen `[C_out, C_in, K, K]` weights and bias,
    /// products summed in f32 whatever the storage type.
    fn conv2d_f32_sum(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;
}

impl Conv2dF32SumOps for Cube {
    fn conv2d_f32_sum(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        conv2d_forward(x, weight, Some(bias), spec)
    }
}

/// The convolution's backward keeps the weights and the input's shape: the gradient goes to
/// the input only (the weights and bias are frozen; see [`conv2d_f32_sum`]).
#[derive(Debug)]
struct Conv2dBackward;

impl Backward<Cube, 1> for Conv2dBackward {
    type State = (CubeTensor, Vec<usize>, ConvSpec);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let d_out = grads.consume::<Cube>(&ops.node);
        if let Some(node) = node {
            let (weight, input_dims, spec) = ops.state;
            grads.register::<Cube>(
                node.id,
                conv2d_backward_data(d_out, weight, input_dims, spec),
            );
        }
    }
}

impl<C: CheckpointStrategy> Conv2dF32SumOps for Autodiff<Cube, C> {
    fn conv2d_f32_sum(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        // Frozen weights: constants of the graph, as `widen_f16`'s results are.
        let weight = into_contiguous(<Self as AutodiffBackend>::inner(weight));
        let bias = <Self as AutodiffBackend>::inner(bias);
        match Conv2dBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let dims = x.meta.shape().to_vec();
                let out = conv2d_forward(x, weight.clone(), Some(bias), spec);
                prep.finish((weight, dims, spec), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(conv2d_forward(x.into_primitive(), weight, Some(bias), spec))
            }
        }
    }
}

/// Whether the convolution kernels can take `x` by `weight` on its device: f32 or f16
/// tensors of one type, a square kernel, 32-bit indexing, and on llvmpipe (which has no
/// passes for these kernels) loops within its budget.
pub fn conv2d_supported(x: &Tensor<4>, weight: &Tensor<4>, spec: ConvSpec) -> bool {
    let (dims, w) = (x.dims(), weight.dims());
    if !(matches!(x.dtype(), DType::F32 | DType::F16) && x.dtype() == weight.dtype())
        || w[2] != w[3]
        || w[1] != dims[1]
        || !runs_wgsl(&x.device())
    {
        return false;
    }
    let [top, left, bottom, right] = spec.padding;
    if dims[2] + top + bottom < w[2] || dims[3] + left + right < w[3] {
        return false;
    }
    let info = spec.info(&dims, &w, true);
    let adapter = x.device().clone();
    let within_budget = |backward: bool| match budget_of(&adapter) {
        Some(budget) => info.loop_iterations(backward) < u64::from(budget) / 4 * 3,
        None => true,
    };
    info.to_bytes(false).is_some() && within_budget(false) && within_budget(true)
}

/// The loop budget of `device`'s adapter ([`tav_shaders::loop_budget`]), read once per device
/// (it is asked on every convolution).
fn budget_of(device: &burn::tensor::Device) -> Option<u32> {
    static BUDGETS: OnceLock<Mutex<HashMap<String, Option<u32>>>> = OnceLock::new();
    let plain = device.clone().without_autodiff();
    let mut budgets = BUDGETS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *budgets
        .entry(format!("{plain:?}"))
        .or_insert_with(|| capabilities(&probe(device)).loop_budget)
}

/// 2-D convolution with every product summed in f32 whatever the storage, so f16
/// activations and weights are convolved without an f32 copy of either (burn's direct
/// convolution sums in its input's type). The weights and bias are frozen: autodiff gives a
/// gradient to `x` only.
pub fn conv2d_f32_sum(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    spec: ConvSpec,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as Conv2dF32SumOps>::conv2d_f32_sum(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        spec,
    ))
}

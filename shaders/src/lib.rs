//! tav's WGSL kernels: memory-efficient attention for the video UNet (sparse-causal and
//! temporal, forward and backward), read in place from the frame-major `[(B·F), L, H·D]`
//! projections, with online softmax: no score matrix is ever stored.
//!
//! Each kernel is written once for f32 storage (`alias T = f32;`); [`source`] derives the
//! f16-storage variant (f32 accumulation) for adapters with `shader-f16`.

pub mod runner;

/// The attention kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Output and per-row log-sum-exp, one invocation per query row (both modes).
    AttentionForward,
    /// dQ and delta = rowsum(dO ∘ O), one invocation per query row (both modes).
    AttentionBackwardQuery,
    /// dK and dV, gathered per key row (no atomics; both modes).
    AttentionBackwardKeyValue,
    /// Forward (both modes), a workgroup per tile of query rows sharing keys, K/V staged in
    /// workgroup memory.
    TiledForward,
    /// dQ and delta (both modes), tiled as the forward.
    TiledBackwardQuery,
    /// Sparse-causal dK and dV, a workgroup per key tile and job of query frames.
    TiledBackwardKeyValue,
    /// Temporal dK and dV, a workgroup per tile of key rows, tiled as the forward.
    TemporalBackwardKeyValue,
    /// Frame 0's dK and dV: the sum of the tiled key/value kernel's per-chunk partials.
    FrameZeroReduce,
}

/// Element type of the kernel's storage buffers (accumulation is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    F32,
    F16,
}

impl Storage {
    fn bytes(self) -> u32 {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
    }
}

/// Which attention a launch computes (the `mode` field of the kernels' `Info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMode {
    /// Frame i attends to frame 0 and frame i−1 (2L keys).
    SparseCausal = 0,
    /// Each token attends to the same token of every frame of its video (F keys).
    Temporal = 1,
}

/// Loop iterations one invocation may run on Mesa's llvmpipe (lavapipe): every loop of an
/// invocation shares one budget of 65,535 iterations (`LP_MAX_TGSI_LOOP_ITERATIONS`), past
/// which loops end silently and results are wrong. Passes are planned below it, with room
/// for the per-pass set-up loops.
pub const LLVMPIPE_LOOP_ITERATIONS: u32 = 65_535;

/// The loop budget of an adapter, by its name: `Some` on llvmpipe, `None` (unbounded, one
/// pass) elsewhere.
pub fn loop_budget(adapter_name: &str) -> Option<u32> {
    adapter_name
        .starts_with("llvmpipe")
        .then_some(LLVMPIPE_LOOP_ITERATIONS)
}

/// Largest head size the kernels hold in registers.
pub const MAX_HEAD_DIM: usize = 256;
/// Invocations per workgroup (rows per workgroup).
pub const WORKGROUP_SIZE: usize = 64;
/// Workgroup memory the tiled kernels stage into: WebGPU's guaranteed minimum, so every
/// adapter (and every browser) takes them.
pub const WORKGROUP_MEMORY_BYTES: u32 = 16_384;
/// Keys (queries, in the key/value kernel) a tiled kernel takes at once from a staged tile:
/// the forward rescales its online softmax once per group.
pub const KEY_GROUP: usize = 4;
/// Query frames per job of the tiled key/value kernel for frame 0's keys (which every frame
/// sees): frame 0's work is split into ⌈F / FRAME_CHUNK⌉ jobs, others take one frame each.
pub const FRAME_CHUNK: u32 = 4;
/// Most invocations that share a row of a tiled kernel (with subgroups): 4 × 64 rows is
/// WebGPU's guaranteed 256 invocations per workgroup.
pub const MAX_LANES: usize = 4;
/// Vec4s of the head an invocation of a tiled kernel holds per operand, at most, where
/// subgroups let a row be split: SD's heads of 80 and 160 (20 and 40 vec4s, two to four
/// operands each) would otherwise need more registers than a GPU gives an invocation at
/// full occupancy, and spill.
pub const LANE_VECS: usize = 8;

/// What an adapter offers the kernels, as their launch plans need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// llvmpipe's loop budget ([`loop_budget`]); `None`: one pass.
    pub loop_budget: Option<u32>,
    /// The adapter's smallest subgroup size, where the device has subgroup operations
    /// (`None`: no subgroups, one invocation per row).
    pub subgroup_size: Option<u32>,
    /// Vec4s of the head an invocation holds at most when subgroups allow splitting a row
    /// ([`LANE_VECS`]; a test lowers it to split small heads too).
    pub lane_vecs: usize,
}

impl Capabilities {
    /// One invocation per row, one pass: what every adapter runs.
    pub const PLAIN: Capabilities = Capabilities {
        loop_budget: None,
        subgroup_size: None,
        lane_vecs: LANE_VECS,
    };

    /// Invocations sharing a row of `kernel` for a head of `head_dim`: 1 without subgroups
    /// or for the per-row kernels; otherwise the fewest (a power of two dividing the head's
    /// vec4s, at most [`MAX_LANES`] and the subgroup size) that leave each at most
    /// `lane_vecs` vec4s.
    pub fn lanes(&self, kernel: Kernel, head_dim: usize) -> usize {
        let Some(subgroup) = self.subgroup_size else {
            return 1;
        };
        if !kernel.tiled() || kernel == Kernel::FrameZeroReduce {
            return 1;
        }
        let vecs = head_dim.div_ceil(4);
        let most = MAX_LANES.min(subgroup as usize);
        let mut lanes = 1;
        while vecs / lanes > self.lane_vecs && lanes * 2 <= most && vecs.is_multiple_of(lanes * 2) {
            lanes *= 2;
        }
        lanes
    }
}

impl Kernel {
    pub const ALL: [Kernel; 8] = [
        Kernel::AttentionForward,
        Kernel::AttentionBackwardQuery,
        Kernel::AttentionBackwardKeyValue,
        Kernel::TiledForward,
        Kernel::TiledBackwardQuery,
        Kernel::TiledBackwardKeyValue,
        Kernel::TemporalBackwardKeyValue,
        Kernel::FrameZeroReduce,
    ];

    /// The file name under `shaders/wgsl/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Kernel::AttentionForward => "attention_forward.wgsl",
            Kernel::AttentionBackwardQuery => "attention_backward_dq.wgsl",
            Kernel::AttentionBackwardKeyValue => "attention_backward_dkv.wgsl",
            Kernel::TiledForward => "attention_tiled_forward.wgsl",
            Kernel::TiledBackwardQuery => "attention_tiled_backward_dq.wgsl",
            Kernel::TiledBackwardKeyValue => "attention_tiled_backward_dkv.wgsl",
            Kernel::TemporalBackwardKeyValue => "attention_temporal_backward_dkv.wgsl",
            Kernel::FrameZeroReduce => "attention_frame_zero_reduce.wgsl",
        }
    }

    fn f32_source(self) -> &'static str {
        match self {
            Kernel::AttentionForward => include_str!("../wgsl/attention_forward.wgsl"),
            Kernel::AttentionBackwardQuery => include_str!("../wgsl/attention_backward_dq.wgsl"),
            Kernel::AttentionBackwardKeyValue => {
                include_str!("../wgsl/attention_backward_dkv.wgsl")
            }
            Kernel::TiledForward => include_str!("../wgsl/attention_tiled_forward.wgsl"),
            Kernel::TiledBackwardQuery => {
                include_str!("../wgsl/attention_tiled_backward_dq.wgsl")
            }
            Kernel::TiledBackwardKeyValue => {
                include_str!("../wgsl/attention_tiled_backward_dkv.wgsl")
            }
            Kernel::TemporalBackwardKeyValue => {
                include_str!("../wgsl/attention_temporal_backward_dkv.wgsl")
            }
            Kernel::FrameZeroReduce => include_str!("../wgsl/attention_frame_zero_reduce.wgsl"),
        }
    }

    /// Whether the kernel is one of the tiled ones (and the reduction after them).
    pub fn tiled(self) -> bool {
        !matches!(
            self,
            Kernel::AttentionForward
                | Kernel::AttentionBackwardQuery
                | Kernel::AttentionBackwardKeyValue
        )
    }

    /// Rows staged per step in workgroup memory: two `vec4` rows of the head per staged row
    /// (K and V, or Q and dO) plus two f32 (lse and delta), within
    /// [`WORKGROUP_MEMORY_BYTES`]; a power of two up to a workgroup's rows.
    pub fn staged_rows(self, head_dim: usize, storage: Storage) -> u32 {
        let vecs = head_dim.div_ceil(4) as u32;
        let per_row = 2 * vecs * 4 * storage.bytes() + 8;
        let fit = (WORKGROUP_MEMORY_BYTES / per_row).max(1);
        (1 << fit.ilog2()).clamp(KEY_GROUP as u32, WORKGROUP_SIZE as u32)
    }
}

/// What an attention pipeline is built for besides its storage type, all fixed in its source:
/// the kernel, the head size, invocations per row ([`Capabilities::lanes`]; 1 for the
/// per-row kernels) and, for the tiled kernels, the mode (the per-row kernels read it from
/// `Info`, so one source serves both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    pub kernel: Kernel,
    pub head_dim: usize,
    pub lanes: usize,
    pub temporal: bool,
}

impl Variant {
    pub fn new(kernel: Kernel, head_dim: usize, lanes: usize, mode: AttentionMode) -> Self {
        Self {
            kernel,
            head_dim,
            lanes,
            temporal: kernel.tiled() && mode == AttentionMode::Temporal,
        }
    }
}

/// The constants a pipeline is built with, put before the shared part, and `lanes_sum`, the
/// sum of a value over the `lanes` invocations sharing a row (a butterfly of subgroup
/// shuffles, so every lane gets the same bits; the value itself with one lane).
fn constants(variant: Variant, storage: Storage) -> String {
    let Variant {
        kernel,
        head_dim,
        lanes,
        temporal,
    } = variant;
    let head_vecs = head_dim.div_ceil(4);
    let mut sum = String::from("x");
    let mut step = 1;
    while step < lanes {
        sum = format!("lanes_step({sum}, {step}u)");
        step *= 2;
    }
    let shuffle = if lanes > 1 {
        "fn lanes_step(x: f32, mask: u32) -> f32 {\n    return x + subgroupShuffleXor(x, mask);\n}\n"
    } else {
        ""
    };
    format!(
        "const HEAD_DIM: u32 = {head_dim}u;\nconst HEAD_VECS: u32 = {head_vecs}u;\n\
         const TILE_ROWS: u32 = {WORKGROUP_SIZE}u;\nconst TILE: u32 = {}u;\n\
         const FRAME_CHUNK: u32 = {FRAME_CHUNK}u;\nconst KEY_GROUP: u32 = {KEY_GROUP}u;\n\
         const LANES: u32 = {lanes}u;\nconst LANE_VECS: u32 = {}u;\n\
         const INVOCATIONS: u32 = {}u;\nconst TEMPORAL_TOKENS: u32 = {}u;\n\
         const TEMPORAL: bool = {temporal};\n\
         {shuffle}fn lanes_sum(x: f32) -> f32 {{\n    return {sum};\n}}\n",
        kernel.staged_rows(head_dim, storage),
        head_vecs / lanes,
        WORKGROUP_SIZE * lanes,
        temporal_tile_tokens_max(head_dim),
    )
}

/// Tokens a temporal tile takes at most: a KEY_GROUP-th of the f32 tile's staged rows, so
/// every storage type stages at least a group of keys per token per step (fewer left most of
/// each unrolled group masked: measured slower than the per-row kernels on lavapipe), and the
/// host counts workgroups without knowing the storage.
fn temporal_tile_tokens_max(head_dim: usize) -> u32 {
    Kernel::TiledForward.staged_rows(head_dim, Storage::F32) / KEY_GROUP as u32
}

/// The WGSL source of `variant` for `storage`: its constants, the shared part, its bindings
/// and their head accessors, then the kernel, unrolled ([`unroll`]). With several lanes the
/// kernel uses subgroup shuffles, which the device must have; browsers want them enabled in
/// the source, naga (native) refuses that.
pub fn source(variant: Variant, storage: Storage) -> String {
    let kernel = variant.kernel;
    let key_tiles = match kernel {
        Kernel::TiledForward | Kernel::TiledBackwardQuery => KEY_TILES,
        _ => "",
    };
    let enable = if variant.lanes > 1 && cfg!(target_family = "wasm") {
        "enable subgroups;\n"
    } else {
        ""
    };
    let text = format!(
        "{enable}{}{COMMON}\n{}\n{key_tiles}\n{}",
        constants(variant, storage),
        bindings(kernel),
        kernel.f32_source()
    );
    let lane_vecs = variant.head_dim.div_ceil(4) / variant.lanes;
    f16_variant_if(
        &unroll(&text, lane_vecs, KEY_GROUP, variant.lanes > 1),
        storage,
    )
}

/// The buffers of `kernel` declared in the order of [`Kernel::slots`] (so the kernels and the
/// plan's executors cannot disagree), the uniform after them, and for each buffer its head
/// accessors (`<name>_vec`, `<name>_store`, from `attention_head_access.wgsl`).
/// Every buffer is declared read_write: burn sub-allocates tensors from shared buffers, and
/// wgpu refuses read and read_write views of one buffer in a dispatch.
fn bindings(kernel: Kernel) -> String {
    let mut out = String::new();
    for (i, (slot, _)) in kernel.slots().iter().enumerate() {
        out += &format!(
            "@group(0) @binding({i}) var<storage, read_write> {}: array<{}>;\n",
            slot.wgsl_name(),
            slot.element()
        );
    }
    out += &format!(
        "@group(0) @binding({}) var<uniform> info: Info;\n",
        kernel.slots().len()
    );
    for (slot, _) in kernel.slots() {
        out += &HEAD_ACCESS
            .replace("$buf", slot.wgsl_name())
            .replace("$elem", slot.element());
    }
    out
}

/// The staged K/V tiles of the tiled forward and dq kernels, and their staging.
const KEY_TILES: &str = include_str!("../wgsl/attention_key_tiles.wgsl");

/// Head accessors written once per bound buffer (`$buf`, element type `$elem`).
const HEAD_ACCESS: &str = include_str!("../wgsl/attention_head_access.wgsl");

/// Unrolls the tiled kernels' per-vec4 and per-key lines: a line holding `$c` is written
/// once per vec4 of the head an invocation holds (c = 0 … `lane_vecs`−1), one holding `$k`
/// once per key of a group (k = 0 … `key_group`−1), one holding both once per pair (keys
/// outer). So a head's values are separate variables on every compiler, not an array
/// indexed at run time. `$cu` is the vec4's index in the head: `c` itself, or with `lanes`
/// (several invocations per row) `lane_base + c`, the kernel's offset of its lane's part.
pub fn unroll(text: &str, lane_vecs: usize, key_group: usize, lanes: bool) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for line in text.lines() {
        let keys = if line.contains("$k") { key_group } else { 1 };
        let vecs = if line.contains("$c") { lane_vecs } else { 1 };
        for k in 0..keys {
            for c in 0..vecs {
                let head_vec = if lanes {
                    format!("(lane_base + {c}u)")
                } else {
                    format!("{c}u")
                };
                out.push_str(
                    &line
                        .replace("$k", &k.to_string())
                        .replace("$cu", &head_vec)
                        .replace("$c", &c.to_string()),
                );
                out.push('\n');
            }
        }
    }
    out
}

/// The shared part of every kernel (storage type, `Info`, key indexing, tiles).
pub const COMMON: &str = include_str!("../wgsl/attention_common.wgsl");

/// Turns an f32-storage kernel into its f16-storage variant.
pub fn f16_variant_if(f32_source: &str, storage: Storage) -> String {
    match storage {
        Storage::F32 => f32_source.to_string(),
        Storage::F16 => format!(
            "enable f16;\n{}",
            f32_source.replace("alias T = f32;", "alias T = f16;")
        ),
    }
}

/// f16 → f32 widening without `shader-f16` (two f16 values per 32-bit word).
pub const WIDEN_F16: &str = include_str!("../wgsl/widen_f16.wgsl");

/// The uniform block of [`WIDEN_F16`], and its dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WidenInfo {
    /// f16 values to widen.
    pub count: u32,
}

/// A uniform block's bytes: its 32-bit words, little-endian, in order.
fn uniform_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The 2-D grid `[x, y]` of workgroups giving one invocation to each of `invocations` items,
/// within WebGPU's 65,535 workgroups per dimension (the kernels index `y · x · 64 + id.x`).
fn elementwise_dispatch(invocations: usize) -> [u32; 2] {
    const MAX_X: u32 = 65_535;
    let groups = invocations.div_ceil(WORKGROUP_SIZE).max(1) as u32;
    let x = groups.min(MAX_X);
    [x, groups.div_ceil(x)]
}

impl WidenInfo {
    /// The 2-D dispatch `[x, y]` covering every pair of values.
    pub fn dispatch(&self) -> [u32; 2] {
        elementwise_dispatch(self.count.div_ceil(2) as usize)
    }

    /// The uniform's bytes (`count`, `words_per_row`, padding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let words_per_row = self.dispatch()[0] * WORKGROUP_SIZE as u32;
        uniform_bytes(&[self.count, words_per_row, 0, 0])
    }
}

/// GEGLU as one op (the feed-forward's `hidden · gelu(gate)`), forward: `[rows, 2W]` to
/// `[rows, W]`, with no temporaries. Written for f32 storage, like the attention kernels
/// ([`geglu_source`] gives the f16 variant).
pub const GEGLU_FORWARD: &str = include_str!("../wgsl/geglu_forward.wgsl");
/// GEGLU's backward: the projection's gradient from the projection and the output's gradient.
pub const GEGLU_BACKWARD: &str = include_str!("../wgsl/geglu_backward.wgsl");

/// The shared part of the GEGLU kernels (storage type, uniform block, erf).
pub const GEGLU_COMMON: &str = include_str!("../wgsl/geglu_common.wgsl");

/// The WGSL source of GEGLU's forward or backward kernel for `storage`: the shared part,
/// then the kernel.
pub fn geglu_source(backward: bool, storage: Storage) -> String {
    let kernel = if backward {
        GEGLU_BACKWARD
    } else {
        GEGLU_FORWARD
    };
    after_common(GEGLU_COMMON, kernel, storage)
}

/// A kernel after its family's shared part, for `storage`.
fn after_common(common: &str, kernel: &str, storage: Storage) -> String {
    f16_variant_if(&format!("{common}\n{kernel}"), storage)
}

/// The uniform block of the GEGLU kernels, and their dispatch (one invocation per output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GegluInfo {
    /// Outputs: rows · W.
    pub count: u32,
    /// W, the output's width (half the projection's).
    pub width: u32,
}

impl GegluInfo {
    /// `rows` of a `[rows, 2·width]` projection; `None` when the outputs do not fit the
    /// kernels' 32-bit indexing (the caller splits the rows).
    pub fn new(rows: usize, width: usize) -> Option<Self> {
        let count = u32::try_from(rows.checked_mul(width)?).ok()?;
        // The projection (2·count elements) is indexed too.
        count.checked_mul(2)?;
        Some(Self {
            count,
            width: width as u32,
        })
    }

    /// The 2-D dispatch `[x, y]` covering every output, within WebGPU's 65,535 per dimension.
    pub fn dispatch(&self) -> [u32; 2] {
        elementwise_dispatch(self.count as usize)
    }

    /// The uniform's bytes (`count`, `width`, outputs per dispatch row, padding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let per_row = self.dispatch()[0] * WORKGROUP_SIZE as u32;
        uniform_bytes(&[self.count, self.width, per_row, 0])
    }
}

/// 2-D convolution summing in f32 whatever the storage (so f16 tensors need no f32 copy):
/// forward, one invocation per output.
pub const CONV2D_FORWARD: &str = include_str!("../wgsl/conv2d_forward.wgsl");
/// 2-D convolution's gradient for its input (frozen weights), one invocation per input
/// element.
pub const CONV2D_BACKWARD_DATA: &str = include_str!("../wgsl/conv2d_backward_data.wgsl");
/// The shared part of the convolution kernels (storage type, uniform block).
pub const CONV2D_COMMON: &str = include_str!("../wgsl/conv2d_common.wgsl");

/// The WGSL source of the convolution's forward or input-gradient kernel for `storage`.
pub fn conv2d_source(backward: bool, storage: Storage) -> String {
    let kernel = if backward {
        CONV2D_BACKWARD_DATA
    } else {
        CONV2D_FORWARD
    };
    after_common(CONV2D_COMMON, kernel, storage)
}

/// The uniform block of the convolution kernels (NCHW tensors, square kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvInfo {
    pub batch: u32,
    pub c_in: u32,
    pub c_out: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel: u32,
    pub stride: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    pub has_bias: bool,
}

impl ConvInfo {
    /// Elements a launch computes: outputs (forward) or input gradients (backward).
    pub fn count(&self, backward: bool) -> usize {
        let (c, h, w) = if backward {
            (self.c_in, self.in_h, self.in_w)
        } else {
            (self.c_out, self.out_h, self.out_w)
        };
        self.batch as usize * c as usize * h as usize * w as usize
    }

    /// Loop iterations of one invocation (every level of the nested loops counting), for
    /// llvmpipe's shared budget: the kernels have no passes, so the caller keeps them under it.
    pub fn loop_iterations(&self, backward: bool) -> u64 {
        let channels = if backward { self.c_out } else { self.c_in } as u64;
        let k = self.kernel as u64;
        channels * (1 + k + k * k) + 1
    }

    /// The 2-D dispatch `[x, y]` covering every element, within 65,535 per dimension.
    pub fn dispatch(&self, backward: bool) -> [u32; 2] {
        elementwise_dispatch(self.count(backward))
    }

    /// The uniform's bytes; `None` when the elements do not fit 32-bit indexing.
    pub fn to_bytes(&self, backward: bool) -> Option<Vec<u8>> {
        let count = u32::try_from(self.count(backward)).ok()?;
        // Inputs and outputs are indexed too.
        u32::try_from(self.count(!backward)).ok()?;
        let per_row = self.dispatch(backward)[0] * WORKGROUP_SIZE as u32;
        let words = [
            self.batch,
            self.c_in,
            self.c_out,
            self.in_h,
            self.in_w,
            self.out_h,
            self.out_w,
            self.kernel,
            self.stride,
            self.pad_top,
            self.pad_left,
            count,
            per_row,
            self.has_bias as u32,
            0,
            0,
        ];
        Some(uniform_bytes(&words))
    }
}

/// The kernels' uniform block, laid out as WGSL's `Info` struct.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Info {
    pub videos: u32,
    pub frames: u32,
    pub tokens: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub mode: AttentionMode,
    pub scale: f32,
    /// Workgroups along x per row of the 2-D dispatch (for > 65,535 workgroups).
    pub rows_per_dispatch_x: u32,
    /// The items (keys, or queries for the key/value kernel) of each row this pass takes.
    pub item_start: u32,
    pub item_end: u32,
    pub first_pass: bool,
    pub last_pass: bool,
}

impl Info {
    /// The uniform's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let words = [
            self.videos,
            self.frames,
            self.tokens,
            self.heads,
            self.head_dim,
            self.mode as u32,
            self.scale.to_bits(),
            self.rows_per_dispatch_x,
            self.item_start,
            self.item_end,
            self.first_pass as u32,
            self.last_pass as u32,
        ];
        uniform_bytes(&words)
    }

    /// The whole loop in one pass.
    pub fn single_pass(self) -> Self {
        Self {
            item_start: 0,
            item_end: u32::MAX,
            first_pass: true,
            last_pass: true,
            ..self
        }
    }

    /// Items a row of `kernel` loops over: keys for the forward and dq kernels, queries for
    /// the key/value kernels (every frame's in the per-row sparse-causal one, at most a job's
    /// in the tiled one; a token's frames in temporal attention); the reduction has no loop
    /// to split.
    pub fn items(&self, kernel: Kernel) -> u32 {
        let temporal = self.mode == AttentionMode::Temporal;
        match kernel {
            Kernel::FrameZeroReduce => 1,
            Kernel::TiledBackwardKeyValue => self.frames.min(FRAME_CHUNK) * self.tokens,
            Kernel::TemporalBackwardKeyValue => self.frames,
            Kernel::AttentionBackwardKeyValue if temporal => self.frames,
            Kernel::AttentionBackwardKeyValue => self.frames * self.tokens,
            _ if temporal => self.frames,
            _ => 2 * self.tokens,
        }
    }

    /// Items one pass of `kernel` may take within llvmpipe's loop `budget`, a quarter of it
    /// kept in reserve. Per-row kernels: two loops over the head per item (measured: about
    /// 2·D + 3 iterations, a loop's exit counting too), set-up and write-back up to 4·D, one
    /// frame loop iteration per frame. Tiled kernels are unrolled over the head and a group
    /// of keys: per item a quarter of an iteration for its group and D/256 + 1/TILE for
    /// staging, counted as 1 + ⌈D/64⌉ (two to eight times that); whole staged tiles even
    /// where a pass starts or ends inside one or a job changes frame. Temporal tiles stage a
    /// group of keys (or more) per row and step, counted as a whole step per item (its loop,
    /// the staging of a tile and of its statistics, a group): over-counted, to be safe.
    fn items_per_pass(&self, kernel: Kernel, budget: u32) -> u32 {
        let usable = budget / 4 * 3;
        let (per_item, fixed) = self.loop_cost(kernel);
        (usable.saturating_sub(fixed) / per_item).max(1)
    }

    /// Loop iterations per item and per pass of `kernel` on llvmpipe ([`Self::items_per_pass`]).
    pub fn loop_cost(&self, kernel: Kernel) -> (u32, u32) {
        let d = self.head_dim.max(1);
        if kernel.tiled() && self.mode == AttentionMode::Temporal {
            let tile = kernel.staged_rows(d as usize, Storage::F16);
            let per_item = 3 + (tile * d.div_ceil(4)).div_ceil(WORKGROUP_SIZE as u32);
            (per_item, 64 + per_item)
        } else if kernel.tiled() {
            let per_item = 1 + (d.div_ceil(4)).div_ceil(16);
            let tile = kernel.staged_rows(d as usize, Storage::F16);
            (per_item, 64 + (2 + FRAME_CHUNK) * tile * per_item)
        } else {
            (2 * d + 4, 4 * d + 2 * self.frames + 64)
        }
    }

    /// The passes of `kernel` within a loop budget (`None`: one pass).
    pub fn passes(&self, kernel: Kernel, budget: Option<u32>) -> Vec<Info> {
        let items = self.items(kernel).max(1);
        let per_pass = match budget {
            Some(budget) if kernel != Kernel::FrameZeroReduce => {
                self.items_per_pass(kernel, budget)
            }
            _ => items,
        };
        let count = items.div_ceil(per_pass);
        (0..count)
            .map(|p| Info {
                item_start: p * per_pass,
                item_end: if p + 1 == count {
                    u32::MAX
                } else {
                    (p + 1) * per_pass
                },
                first_pass: p == 0,
                last_pass: p + 1 == count,
                ..*self
            })
            .collect()
    }

    /// Vec4s holding a head (the tiled kernels pad it with zeros to a multiple of 4).
    fn head_vecs(&self) -> usize {
        (self.head_dim as usize).div_ceil(4)
    }

    /// f32 values of `kernel`'s between-pass state (at least one, so it can be bound).
    pub fn state_elements(&self, kernel: Kernel, passes: usize) -> usize {
        if passes <= 1 {
            return 1;
        }
        let d = self.head_dim as usize;
        let vecs = self.head_vecs();
        match kernel {
            Kernel::AttentionForward => self.rows() * (d + 2),
            Kernel::AttentionBackwardQuery => self.rows() * d,
            Kernel::AttentionBackwardKeyValue => self.rows() * 2 * d,
            Kernel::TiledForward => self.rows() * (4 * vecs + 2),
            Kernel::TiledBackwardQuery => self.rows() * 4 * vecs,
            Kernel::TiledBackwardKeyValue => {
                self.key_jobs() * self.rows() / self.frames.max(1) as usize * 8 * vecs
            }
            Kernel::TemporalBackwardKeyValue => self.rows() * 8 * vecs,
            Kernel::FrameZeroReduce => 1,
        }
    }

    /// Chunks of query frames frame 0's keys are split into by the tiled key/value kernel.
    pub fn frame_zero_chunks(&self) -> usize {
        self.frames.div_ceil(FRAME_CHUNK) as usize
    }

    /// Jobs of the tiled key/value kernel per (video, head, key tile): frame 0's chunks, then
    /// frames 1 … F−1.
    fn key_jobs(&self) -> usize {
        self.frame_zero_chunks() + self.frames as usize - 1
    }

    /// f32 values of frame 0's per-chunk sums (dk and dv) written by the tiled key/value
    /// kernel: none (one bound) when one chunk writes in place.
    pub fn partial_elements(&self) -> usize {
        let chunks = self.frame_zero_chunks();
        if chunks <= 1 {
            return 1;
        }
        let per_video = (self.tokens * self.heads * self.head_dim) as usize;
        2 * chunks * self.videos as usize * per_video
    }

    /// Rows: every (frame, head, token).
    pub fn rows(&self) -> usize {
        self.videos as usize * self.frames as usize * self.heads as usize * self.tokens as usize
    }

    /// Frames a tile of the tiled kernels takes: all of a temporal row's, up to a
    /// workgroup's rows (1 for sparse-causal), as `tile_frames` in attention_common.wgsl.
    fn tile_frames(&self) -> usize {
        match self.mode {
            AttentionMode::Temporal => self.frames.clamp(1, WORKGROUP_SIZE as u32) as usize,
            AttentionMode::SparseCausal => 1,
        }
    }

    /// Tokens a tile of the tiled kernels takes (`tile_tokens` in attention_common.wgsl).
    pub fn tile_tokens(&self) -> usize {
        match self.mode {
            AttentionMode::Temporal => (WORKGROUP_SIZE / self.tile_frames())
                .min(temporal_tile_tokens_max(self.head_dim as usize) as usize),
            AttentionMode::SparseCausal => WORKGROUP_SIZE,
        }
    }

    /// Workgroups of one launch of `kernel`.
    pub fn workgroups(&self, kernel: Kernel) -> usize {
        let tiles = (self.tokens as usize).div_ceil(WORKGROUP_SIZE);
        let video_heads = self.videos as usize * self.heads as usize;
        match kernel {
            Kernel::AttentionForward
            | Kernel::AttentionBackwardQuery
            | Kernel::AttentionBackwardKeyValue => self.rows().div_ceil(WORKGROUP_SIZE),
            Kernel::TiledForward
            | Kernel::TiledBackwardQuery
            | Kernel::TemporalBackwardKeyValue => {
                let frame_tiles = (self.frames as usize).div_ceil(self.tile_frames());
                video_heads * frame_tiles * (self.tokens as usize).div_ceil(self.tile_tokens())
            }
            Kernel::TiledBackwardKeyValue => video_heads * self.key_jobs() * tiles,
            Kernel::FrameZeroReduce => (self.rows() / self.frames.max(1) as usize
                * self.head_dim as usize)
                .div_ceil(WORKGROUP_SIZE),
        }
    }

    /// The 2-D dispatch `[x, y]` of `kernel`, within WebGPU's 65,535 per dimension (the
    /// kernels number workgroups `y · rows_per_dispatch_x + x`).
    pub fn dispatch(&self, kernel: Kernel) -> [u32; 2] {
        let groups = self.workgroups(kernel).max(1) as u32;
        let x = groups.clamp(1, self.rows_per_dispatch_x);
        [x, groups.div_ceil(x).max(1)]
    }

    /// Whether a temporal tile fills at least three quarters of a workgroup's rows. With few
    /// frames it does not where the head is large (its tokens are bounded by the staged rows,
    /// e.g. 2 tokens × 8 frames at head 160): many invocations would idle, and a staged key is
    /// shared by few queries, so the per-row kernels (every invocation a row) take it. On
    /// lavapipe, tiles of 48 and 64 rows ran faster than the per-row kernels and tiles of 32
    /// slower (BENCHMARKS.md).
    pub fn temporal_tiles_fill(&self) -> bool {
        4 * self.tile_tokens() * self.tile_frames() >= 3 * WORKGROUP_SIZE
    }

    /// The kernels of the forward or backward pass, in launch order: the tiled ones unless
    /// `tiling` says per row, or temporal tiles would be under three quarters full
    /// ([`Self::temporal_tiles_fill`]).
    pub fn kernels(&self, backward: bool, tiling: Tiling) -> Vec<Kernel> {
        let temporal = self.mode == AttentionMode::Temporal;
        let tiled = tiling == Tiling::Tiled && (!temporal || self.temporal_tiles_fill());
        match (backward, tiled) {
            (false, false) => vec![Kernel::AttentionForward],
            (false, true) => vec![Kernel::TiledForward],
            (true, false) => vec![
                Kernel::AttentionBackwardQuery,
                Kernel::AttentionBackwardKeyValue,
            ],
            (true, true) if temporal => {
                vec![Kernel::TiledBackwardQuery, Kernel::TemporalBackwardKeyValue]
            }
            (true, true) if self.frame_zero_chunks() > 1 => vec![
                Kernel::TiledBackwardQuery,
                Kernel::TiledBackwardKeyValue,
                Kernel::FrameZeroReduce,
            ],
            (true, true) => vec![Kernel::TiledBackwardQuery, Kernel::TiledBackwardKeyValue],
        }
    }

    /// Every launch of the forward or backward pass on an adapter with `capabilities`, with
    /// the scratch it needs: what both the model's path (`tav-core`) and [`runner`] execute.
    pub fn plan(&self, backward: bool, tiling: Tiling, capabilities: &Capabilities) -> Plan {
        let budget = capabilities.loop_budget;
        let mut plan = Plan {
            launches: Vec::new(),
            state_elements: 1,
            partial_elements: 1,
        };
        for kernel in self.kernels(backward, tiling) {
            let passes = self.passes(kernel, budget);
            plan.state_elements = plan
                .state_elements
                .max(self.state_elements(kernel, passes.len()));
            if kernel == Kernel::TiledBackwardKeyValue {
                plan.partial_elements = self.partial_elements();
            }
            let lanes = capabilities.lanes(kernel, self.head_dim as usize);
            plan.launches.extend(passes.into_iter().map(|info| Launch {
                kernel,
                info,
                lanes,
            }));
        }
        plan
    }
}

/// Whether attention runs the tiled kernels or the per-row ones (kept as a second reference
/// in tests, and for `tav bench --kernel attention --tiling rows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tiling {
    Tiled,
    PerRow,
}

/// A buffer a kernel binds, by what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Q,
    K,
    V,
    Out,
    Lse,
    DOut,
    DQ,
    Delta,
    DK,
    DV,
    /// Frame 0's per-chunk dk/dv sums ([`Info::partial_elements`] f32).
    Partials,
    /// Accumulators between passes ([`Plan::state_elements`] f32).
    State,
}

impl Slot {
    /// The buffer's name in the kernels.
    pub fn wgsl_name(self) -> &'static str {
        match self {
            Slot::Q => "q",
            Slot::K => "k",
            Slot::V => "v",
            Slot::Out => "o",
            Slot::Lse => "lse",
            Slot::DOut => "d_o",
            Slot::DQ => "d_q",
            Slot::Delta => "delta",
            Slot::DK => "d_k",
            Slot::DV => "d_v",
            Slot::Partials => "partials",
            Slot::State => "state",
        }
    }

    /// The element type: the storage type `T` for tensors of the model, f32 for row
    /// statistics and accumulators.
    fn element(self) -> &'static str {
        match self {
            Slot::Lse | Slot::Delta | Slot::Partials | Slot::State => "f32",
            _ => "T",
        }
    }
}

/// How a kernel uses a bound buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Read and written: between-pass state, and dq's delta (written by its first pass, read
    /// by the others).
    ReadWrite,
}

impl Kernel {
    /// The buffers of `kernel` in binding order (the uniform `Info` is bound after them).
    pub fn slots(self) -> &'static [(Slot, Access)] {
        use Access::*;
        use Slot::*;
        match self {
            Kernel::AttentionForward | Kernel::TiledForward => &[
                (Q, Read),
                (K, Read),
                (V, Read),
                (Out, Write),
                (Lse, Write),
                (State, ReadWrite),
            ],
            Kernel::AttentionBackwardQuery | Kernel::TiledBackwardQuery => &[
                (Q, Read),
                (K, Read),
                (V, Read),
                (Out, Read),
                (DOut, Read),
                (Lse, Read),
                (DQ, Write),
                (Delta, ReadWrite),
                (State, ReadWrite),
            ],
            Kernel::AttentionBackwardKeyValue | Kernel::TemporalBackwardKeyValue => &[
                (Q, Read),
                (K, Read),
                (V, Read),
                (DOut, Read),
                (Lse, Read),
                (Delta, Read),
                (DK, Write),
                (DV, Write),
                (State, ReadWrite),
            ],
            Kernel::TiledBackwardKeyValue => &[
                (Q, Read),
                (K, Read),
                (V, Read),
                (DOut, Read),
                (Lse, Read),
                (Delta, Read),
                (DK, Write),
                (DV, Write),
                (Partials, Write),
                (State, ReadWrite),
            ],
            Kernel::FrameZeroReduce => &[(Partials, Read), (DK, Write), (DV, Write)],
        }
    }
}

/// One dispatch: a kernel and its uniform block (its pass, when passes are needed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Launch {
    pub kernel: Kernel,
    pub info: Info,
    /// Invocations per row ([`Capabilities::lanes`]): part of the pipeline's source.
    pub lanes: usize,
}

impl Launch {
    /// What its pipeline is built for.
    pub fn variant(&self) -> Variant {
        Variant::new(
            self.kernel,
            self.info.head_dim as usize,
            self.lanes,
            self.info.mode,
        )
    }

    /// The 2-D workgroup grid of this launch.
    pub fn dispatch(&self) -> [u32; 2] {
        self.info.dispatch(self.kernel)
    }
}

/// The launches of one pass (forward or backward) and the scratch buffers they share.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub launches: Vec<Launch>,
    /// f32 values of the between-pass state (the largest any kernel needs; 1 if none).
    pub state_elements: usize,
    /// f32 values of frame 0's per-chunk sums (1 if none).
    pub partial_elements: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(source: &str, name: &str, f16: bool) {
        validate_with(source, name, f16, false)
    }

    /// Validates `source`, with subgroup operations allowed (in compute) only if `subgroups`.
    fn validate_with(source: &str, name: &str, f16: bool, subgroups: bool) {
        use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, Validator};
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        // `unpack2x16float` is core WGSL (WebGPU has it everywhere); naga gates it behind
        // this capability only for its GL backends.
        let mut capabilities = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if f16 {
            capabilities |= Capabilities::SHADER_FLOAT16;
        }
        if subgroups {
            capabilities |= Capabilities::SUBGROUP;
        }
        let mut validator = Validator::new(naga::valid::ValidationFlags::all(), capabilities);
        if subgroups {
            validator
                .subgroup_stages(ShaderStages::COMPUTE)
                .subgroup_operations(SubgroupOperationSet::all());
        }
        validator
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    }

    /// Head sizes the kernels are validated at: SD's, the toy's and test sizes, sizes that
    /// are not multiples of 4, 1 and the largest.
    const HEAD_DIMS: [usize; 9] = [1, 6, 8, 13, 40, 64, 80, 160, 256];

    const MODES: [AttentionMode; 2] = [AttentionMode::SparseCausal, AttentionMode::Temporal];

    /// Every `.wgsl` file in `shaders/wgsl`, f32 and f16 variants, parses and validates; the
    /// attention kernels at every head size of [`HEAD_DIMS`].
    #[test]
    fn every_wgsl_file_validates_with_naga() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wgsl");
        assert!(
            COMMON.contains("alias T = f32;"),
            "the shared part declares the storage type"
        );
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "wgsl") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.display().to_string();
            // Kernels are validated as loaded, after their family's shared part (and the
            // attention kernels' constants); the shared parts validate alone (GEGLU's) or
            // after the constants (attention's).
            let file_name = path.file_name().unwrap().to_string_lossy();
            let full = if text == HEAD_ACCESS || text == KEY_TILES {
                // Validated inside every attention kernel.
                vec![]
            } else if text == GEGLU_COMMON || text == CONV2D_COMMON || !text.contains("@compute") {
                if text == COMMON {
                    vec![format!(
                        "{}{text}",
                        constants(
                            Variant::new(Kernel::TiledForward, 40, 1, AttentionMode::SparseCausal),
                            Storage::F32
                        )
                    )]
                } else {
                    vec![text]
                }
            } else if file_name.starts_with("geglu_") {
                vec![format!("{GEGLU_COMMON}\n{text}")]
            } else if file_name.starts_with("conv2d_") {
                vec![format!("{CONV2D_COMMON}\n{text}")]
            } else if let Some(kernel) = Kernel::ALL.iter().find(|k| k.file_name() == file_name) {
                // Both modes; with subgroups (several lanes per row) too, validated below.
                HEAD_DIMS
                    .iter()
                    .flat_map(|&d| {
                        MODES.map(|mode| source(Variant::new(*kernel, d, 1, mode), Storage::F32))
                    })
                    .collect()
            } else {
                vec![text]
            };
            for full in full {
                validate(&full, &name, false);
                validate(
                    &f16_variant_if(&full, Storage::F16),
                    &format!("{name} (f16)"),
                    true,
                );
            }
            count += 1;
        }
        assert_eq!(
            count,
            Kernel::ALL.len() + 10,
            "every kernel file (the shared part, head accessors and key tiles, widen_f16, GEGLU's three and the convolution's three too) is known to the crate"
        );
        for kernel in Kernel::ALL {
            assert!(dir.join(kernel.file_name()).is_file());
        }
    }

    /// The tiled kernels with a row split over 2 or 4 invocations validate (f32 and f16)
    /// with subgroup operations, and are refused without them: the fallback (one lane) is
    /// what an adapter without subgroups gets, and needs none.
    #[test]
    fn tiled_kernels_split_over_lanes_validate_with_subgroups_only() {
        let mut split = 0;
        for kernel in [
            Kernel::TiledForward,
            Kernel::TiledBackwardQuery,
            Kernel::TiledBackwardKeyValue,
            Kernel::TemporalBackwardKeyValue,
        ] {
            for d in HEAD_DIMS {
                let mode = if kernel == Kernel::TemporalBackwardKeyValue || d % 2 == 0 {
                    AttentionMode::Temporal
                } else {
                    AttentionMode::SparseCausal
                };
                let one = source(Variant::new(kernel, d, 1, mode), Storage::F32);
                assert!(!one.contains("subgroupShuffle"), "{kernel:?} {d}");
                for lanes in [2, 4] {
                    if !d.div_ceil(4).is_multiple_of(lanes) {
                        continue;
                    }
                    let name = format!("{kernel:?} head {d}, {lanes} lanes, {mode:?}");
                    let text = source(Variant::new(kernel, d, lanes, mode), Storage::F32);
                    validate_with(&text, &name, false, true);
                    let f16 = f16_variant_if(&text, Storage::F16);
                    validate_with(&f16, &format!("{name} (f16)"), true, true);
                    let refused = std::panic::catch_unwind(|| validate(&text, &name, false));
                    assert!(refused.is_err(), "{name} needs subgroups");
                    split += 1;
                }
            }
        }
        assert!(split >= 4 * 8, "head sizes split over lanes: {split}");
    }

    /// Lanes are a power of two dividing the head's vec4s, within the subgroup and
    /// MAX_LANES, and only for the tiled kernels; without subgroups always one.
    #[test]
    fn lanes_split_large_heads_where_subgroups_allow() {
        let gpu = Capabilities {
            subgroup_size: Some(32),
            ..Capabilities::PLAIN
        };
        let lanes = |caps: &Capabilities, d| caps.lanes(Kernel::TiledForward, d);
        // SD's heads: 40 (10 vec4s) in 2 × 5, 80 in 4 × 5, 160 in 4 × 10 (MAX_LANES).
        assert_eq!([40, 80, 160].map(|d| lanes(&gpu, d)), [2, 4, 4]);
        // Small heads and heads whose vec4s are odd stay whole.
        assert_eq!([8, 13, 32, 44].map(|d| lanes(&gpu, d)), [1, 1, 1, 1]);
        assert_eq!(lanes(&Capabilities::PLAIN, 160), 1);
        assert_eq!(gpu.lanes(Kernel::AttentionForward, 160), 1);
        assert_eq!(gpu.lanes(Kernel::FrameZeroReduce, 160), 1);
        let narrow = Capabilities {
            subgroup_size: Some(2),
            ..gpu
        };
        assert_eq!(lanes(&narrow, 160), 2);
        let forced = Capabilities {
            lane_vecs: 1,
            ..gpu
        };
        assert_eq!([4, 8, 16, 24].map(|d| lanes(&forced, d)), [1, 2, 4, 2]);
    }

    #[test]
    fn unrolling_writes_a_line_per_vec4_and_key() {
        let text = "a\nx$c = y$c;\ns$k += q$c[$ku];\nb\n";
        assert_eq!(
            unroll(text, 2, 3, false),
            "a\nx0 = y0;\nx1 = y1;\ns0 += q0[0u];\ns0 += q1[0u];\ns1 += q0[1u];\n\
             s1 += q1[1u];\ns2 += q0[2u];\ns2 += q1[2u];\nb\n"
        );
        // Split over lanes, `$cu` is the vec4's place in the whole head.
        assert_eq!(
            unroll("x$c = h[$cu];\n", 2, 3, true),
            "x0 = h[(lane_base + 0u)];\nx1 = h[(lane_base + 1u)];\n"
        );
        for kernel in Kernel::ALL {
            for lanes in [1, 2] {
                let variant = Variant::new(kernel, 40, lanes, AttentionMode::Temporal);
                assert!(!source(variant, Storage::F32).contains('$'), "{kernel:?}");
            }
        }
    }

    /// Staged tiles fit WebGPU's guaranteed workgroup memory at every head size.
    #[test]
    fn staged_tiles_fit_workgroup_memory() {
        for d in HEAD_DIMS {
            for storage in [Storage::F32, Storage::F16] {
                let tile = Kernel::TiledForward.staged_rows(d, storage);
                let bytes = tile * (2 * d.div_ceil(4) as u32 * 4 * storage.bytes() + 8);
                assert!(tile.is_power_of_two() && tile <= 64, "{d}: {tile}");
                assert!(
                    (tile as usize).is_multiple_of(KEY_GROUP),
                    "groups tile the staged rows"
                );
                assert!(
                    bytes <= WORKGROUP_MEMORY_BYTES,
                    "{d} {storage:?}: {bytes} B"
                );
            }
        }
        assert_eq!(Kernel::TiledForward.staged_rows(40, Storage::F32), 32);
    }

    /// Temporal tiles fill a workgroup's rows with whole tokens' frames (frame tiles past 64
    /// frames), and their tokens never outnumber the staged rows of either storage type, so
    /// every token gets at least one staged key per step.
    #[test]
    fn temporal_tiles_cover_every_row_once() {
        for head_dim in HEAD_DIMS {
            for frames in [1u32, 2, 3, 8, 16, 24, 63, 64, 65, 130] {
                let info = Info {
                    videos: 2,
                    frames,
                    tokens: 37,
                    heads: 3,
                    head_dim: head_dim as u32,
                    mode: AttentionMode::Temporal,
                    scale: 1.0,
                    rows_per_dispatch_x: 65_535,
                    item_start: 0,
                    item_end: u32::MAX,
                    first_pass: true,
                    last_pass: true,
                };
                let tokens = info.tile_tokens();
                let tile_frames = info.tile_frames();
                let tiled = info.kernels(false, Tiling::Tiled) == [Kernel::TiledForward];
                assert_eq!(tiled, 4 * tokens * tile_frames >= 3 * WORKGROUP_SIZE);
                // SD's heads at 24 frames, 40 and 80 at 16, 40 at 8 are tiled; the rest of 8
                // and 16 frames and 2 frames are not (measured slower on lavapipe).
                let sd_tiled = match (head_dim, frames) {
                    (40 | 80 | 160, 24) | (40 | 80, 16) | (40, 8) => Some(true),
                    (160, 16) | (80 | 160, 8) | (40 | 80 | 160, 2) => Some(false),
                    _ => None,
                };
                if let Some(expected) = sd_tiled {
                    assert_eq!(tiled, expected, "{info:?}");
                }
                assert!(tokens >= 1 && tokens * tile_frames <= WORKGROUP_SIZE);
                for storage in [Storage::F32, Storage::F16] {
                    let tile = Kernel::TiledForward.staged_rows(head_dim, storage);
                    assert!(tokens as u32 * KEY_GROUP as u32 <= tile);
                }
                let tiles = info.workgroups(Kernel::TiledForward);
                assert!(tiles * tokens * tile_frames >= info.rows(), "{info:?}");
                assert_eq!(
                    tiles,
                    2 * 3 * (frames as usize).div_ceil(tile_frames) * 37usize.div_ceil(tokens)
                );
            }
        }
    }

    #[test]
    fn a_broken_kernel_fails_validation() {
        let plain = Variant::new(Kernel::AttentionForward, 40, 1, AttentionMode::SparseCausal);
        let broken = source(plain, Storage::F32).replace(
            "running_sum = running_sum * rescale + p;",
            "running_sum = q;",
        );
        let result = std::panic::catch_unwind(|| validate(&broken, "broken", false));
        assert!(result.is_err(), "naga rejects a type error");
    }

    #[test]
    fn geglu_dispatch_covers_every_output_within_limits() {
        for (rows, width) in [(1usize, 1usize), (3, 7), (64, 1280), (2 * 24 * 4096, 1280)] {
            let info = GegluInfo::new(rows, width).unwrap();
            let [x, y] = info.dispatch();
            assert!(x <= 65_535 && y <= 65_535, "{rows}×{width}: {x}×{y}");
            let bytes = info.to_bytes();
            let per_row = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
            assert_eq!(per_row, x * 64);
            assert!(per_row as u64 * y as u64 >= (rows * width) as u64);
        }
        // Past 32-bit indexing of the projection, the caller is told to split.
        assert_eq!(GegluInfo::new(1 << 20, 4096), None);
    }

    #[test]
    fn widening_dispatch_covers_every_value_within_limits() {
        for count in [1u32, 2, 3, 127, 128, 129, 29_491_200, 2 * 64 * 65_535 + 1] {
            let info = WidenInfo { count };
            let [x, y] = info.dispatch();
            assert!(x <= 65_535 && y <= 65_535, "{count}: {x}×{y}");
            let words_per_row = u32::from_le_bytes(info.to_bytes()[4..8].try_into().unwrap());
            assert_eq!(words_per_row, x * 64);
            // Every word is reached, and rows do not overlap.
            assert!(
                words_per_row as u64 * y as u64 >= count.div_ceil(2) as u64,
                "{count}"
            );
        }
    }

    /// On llvmpipe every pass of every kernel stays inside the shared loop budget, the passes
    /// tile each row's items without gaps, and elsewhere one pass does it all.
    #[test]
    fn passes_tile_the_items_within_the_loop_budget() {
        for (frames, tokens, head_dim, mode) in [
            (24, 4096, 40, AttentionMode::SparseCausal),
            (1, 240, 160, AttentionMode::SparseCausal),
            (24, 4096, 40, AttentionMode::Temporal),
            (3, 7, 8, AttentionMode::SparseCausal),
            (7, 300, 256, AttentionMode::SparseCausal),
        ] {
            let info = Info {
                videos: 1,
                frames,
                tokens,
                heads: 1,
                head_dim,
                mode,
                scale: 1.0,
                rows_per_dispatch_x: 65_535,
                item_start: 0,
                item_end: 0,
                first_pass: false,
                last_pass: false,
            };
            for kernel in Kernel::ALL {
                let items = info.items(kernel);
                assert_eq!(info.passes(kernel, None).len(), 1);
                let passes = info.passes(kernel, loop_budget("llvmpipe (LLVM 15.0.6, 256 bits)"));
                assert!(passes[0].first_pass && passes.last().unwrap().last_pass);
                let mut next = 0;
                for p in &passes {
                    assert_eq!(p.item_start, next, "{kernel:?} {info:?}");
                    let end = p.item_end.min(items);
                    let (per_item, fixed) = info.loop_cost(kernel);
                    let cost = (end - p.item_start) * per_item + fixed;
                    assert!(cost < LLVMPIPE_LOOP_ITERATIONS, "{kernel:?}: {cost}");
                    next = end;
                }
                assert_eq!(next, items);
            }
        }
        assert_eq!(loop_budget("NVIDIA H200"), None);
    }

    #[test]
    fn dispatch_covers_every_row_within_limits() {
        let info = Info {
            videos: 2,
            frames: 24,
            tokens: 4096,
            heads: 8,
            head_dim: 40,
            mode: AttentionMode::SparseCausal,
            scale: 40f32.powf(-0.5),
            rows_per_dispatch_x: 65_535,
            item_start: 0,
            item_end: u32::MAX,
            first_pass: true,
            last_pass: true,
        };
        for kernel in Kernel::ALL {
            let [x, y] = info.dispatch(kernel);
            assert!(x <= 65_535 && y <= 65_535);
            assert!((x as usize * y as usize) >= info.workgroups(kernel));
        }
        // Per-row kernels: a workgroup per 64 rows; tiled: per 64 tokens of a (frame, head),
        // and for the key/value kernel per job (frame 0's 6 chunks of 4, then frames 1…23).
        assert_eq!(info.workgroups(Kernel::AttentionForward), info.rows() / 64);
        assert_eq!(info.workgroups(Kernel::TiledForward), 2 * 24 * 8 * 64);
        assert_eq!(
            info.workgroups(Kernel::TiledBackwardKeyValue),
            2 * 8 * (6 + 23) * 64
        );
        assert_eq!(info.partial_elements(), 2 * 6 * 2 * 4096 * 8 * 40);
        assert_eq!(
            info.kernels(true, Tiling::Tiled),
            [
                Kernel::TiledBackwardQuery,
                Kernel::TiledBackwardKeyValue,
                Kernel::FrameZeroReduce
            ]
        );
        // Temporal tiles: 24 frames of 2 tokens (48 rows).
        let temporal = Info {
            mode: AttentionMode::Temporal,
            ..info
        };
        assert_eq!(
            temporal.kernels(false, Tiling::Tiled),
            [Kernel::TiledForward]
        );
        assert_eq!(
            temporal.kernels(true, Tiling::Tiled),
            [Kernel::TiledBackwardQuery, Kernel::TemporalBackwardKeyValue]
        );
        assert_eq!(temporal.tile_tokens(), 2);
        for kernel in [Kernel::TiledForward, Kernel::TemporalBackwardKeyValue] {
            assert_eq!(temporal.workgroups(kernel), 2 * 8 * 2048);
        }
        assert_eq!(
            temporal.kernels(false, Tiling::PerRow),
            [Kernel::AttentionForward]
        );
        assert_eq!(info.to_bytes()[24..28], info.scale.to_bits().to_le_bytes());
    }
}

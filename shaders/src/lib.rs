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
    /// Output and per-row log-sum-exp.
    AttentionForward,
    /// dQ and delta = rowsum(dO ∘ O).
    AttentionBackwardQuery,
    /// dK and dV, gathered per key (no atomics).
    AttentionBackwardKeyValue,
}

/// Element type of the kernel's storage buffers (accumulation is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
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

impl Kernel {
    pub const ALL: [Kernel; 3] = [
        Kernel::AttentionForward,
        Kernel::AttentionBackwardQuery,
        Kernel::AttentionBackwardKeyValue,
    ];

    /// The file name under `shaders/wgsl/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Kernel::AttentionForward => "attention_forward.wgsl",
            Kernel::AttentionBackwardQuery => "attention_backward_dq.wgsl",
            Kernel::AttentionBackwardKeyValue => "attention_backward_dkv.wgsl",
        }
    }

    fn f32_source(self) -> &'static str {
        match self {
            Kernel::AttentionForward => include_str!("../wgsl/attention_forward.wgsl"),
            Kernel::AttentionBackwardQuery => include_str!("../wgsl/attention_backward_dq.wgsl"),
            Kernel::AttentionBackwardKeyValue => {
                include_str!("../wgsl/attention_backward_dkv.wgsl")
            }
        }
    }
}

/// The WGSL source of `kernel` for `storage`: the shared part, then the kernel.
pub fn source(kernel: Kernel, storage: Storage) -> String {
    f16_variant_if(&format!("{COMMON}\n{}", kernel.f32_source()), storage)
}

/// The shared part of every kernel (storage type, `Info`, key indexing).
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
    pub fn to_bytes(&self) -> [u8; 16] {
        let words_per_row = self.dispatch()[0] * WORKGROUP_SIZE as u32;
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&self.count.to_le_bytes());
        out[4..8].copy_from_slice(&words_per_row.to_le_bytes());
        out
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
    f16_variant_if(&format!("{GEGLU_COMMON}\n{kernel}"), storage)
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
    pub fn to_bytes(&self) -> [u8; 16] {
        let per_row = self.dispatch()[0] * WORKGROUP_SIZE as u32;
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&self.count.to_le_bytes());
        out[4..8].copy_from_slice(&self.width.to_le_bytes());
        out[8..12].copy_from_slice(&per_row.to_le_bytes());
        out
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
    pub fn to_bytes(&self) -> [u8; 48] {
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
        let mut out = [0u8; 48];
        for (i, w) in words.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
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

    /// Items a row of `kernel` loops over: keys for the forward and dq kernels, queries
    /// (every frame's, in sparse-causal mode) for the key/value kernel.
    pub fn items(&self, kernel: Kernel) -> u32 {
        let temporal = self.mode == AttentionMode::Temporal;
        match kernel {
            Kernel::AttentionBackwardKeyValue if temporal => self.frames,
            Kernel::AttentionBackwardKeyValue => self.frames * self.tokens,
            _ if temporal => self.frames,
            _ => 2 * self.tokens,
        }
    }

    /// The passes of `kernel` within a loop budget (`None`: one pass). Each item costs two
    /// loops over the head (measured on llvmpipe: about 2·D + 3 iterations, a loop's exit
    /// counting too); set-up and write-back cost up to 4·D, and the key/value kernel walks
    /// one frame loop iteration per frame. A quarter of the budget is kept in reserve.
    pub fn passes(&self, kernel: Kernel, budget: Option<u32>) -> Vec<Info> {
        let items = self.items(kernel).max(1);
        let d = self.head_dim.max(1);
        let per_pass = match budget {
            None => items,
            Some(budget) => {
                let usable = budget / 4 * 3;
                let fixed = 4 * d + 2 * self.frames + 64;
                (usable.saturating_sub(fixed) / (2 * d + 4)).max(1)
            }
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

    /// f32 values of `kernel`'s between-pass state (at least one, so it can be bound).
    pub fn state_elements(&self, kernel: Kernel, passes: usize) -> usize {
        if passes <= 1 {
            return 1;
        }
        let d = self.head_dim as usize;
        self.rows()
            * match kernel {
                Kernel::AttentionForward => d + 2,
                Kernel::AttentionBackwardQuery => d,
                Kernel::AttentionBackwardKeyValue => 2 * d,
            }
    }

    /// Rows (one invocation each): every (frame, head, token).
    pub fn rows(&self) -> usize {
        self.videos as usize * self.frames as usize * self.heads as usize * self.tokens as usize
    }

    /// The 2-D dispatch `[x, y]` covering every row, within WebGPU's 65,535 per dimension.
    pub fn dispatch(&self) -> [u32; 2] {
        let groups = self.rows().div_ceil(WORKGROUP_SIZE) as u32;
        let x = groups.clamp(1, self.rows_per_dispatch_x);
        [x, groups.div_ceil(x).max(1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(source: &str, name: &str, f16: bool) {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        // `unpack2x16float` is core WGSL (WebGPU has it everywhere); naga gates it behind
        // this capability only for its GL backends.
        let core = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        let capabilities = if f16 {
            core | naga::valid::Capabilities::SHADER_FLOAT16
        } else {
            core
        };
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    }

    /// Every `.wgsl` file in `shaders/wgsl`, f32 and f16 variants, parses and validates.
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
            // Kernels are validated as loaded, after their family's shared part; the shared
            // parts validate alone.
            let file_name = path.file_name().unwrap().to_string_lossy();
            let full = if text == COMMON || text == GEGLU_COMMON {
                text
            } else if file_name.starts_with("geglu_") {
                format!("{GEGLU_COMMON}\n{text}")
            } else {
                format!("{COMMON}\n{text}")
            };
            validate(&full, &name, false);
            validate(
                &f16_variant_if(&full, Storage::F16),
                &format!("{name} (f16)"),
                true,
            );
            count += 1;
        }
        assert_eq!(
            count,
            Kernel::ALL.len() + 5,
            "every kernel file (the shared part, widen_f16 and GEGLU's three too) is known to the crate"
        );
        for kernel in Kernel::ALL {
            assert!(dir.join(kernel.file_name()).is_file());
        }
    }

    #[test]
    fn a_broken_kernel_fails_validation() {
        let broken = source(Kernel::AttentionForward, Storage::F32).replace(
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
                    let cost =
                        (end - p.item_start) * (2 * head_dim + 4) + 4 * head_dim + 2 * frames;
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
        let [x, y] = info.dispatch();
        assert!(x <= 65_535 && y <= 65_535);
        assert!((x as usize * y as usize) * WORKGROUP_SIZE >= info.rows());
        assert_eq!(info.to_bytes()[24..28], info.scale.to_bits().to_le_bytes());
    }
}

// Widens f16 values to f32 without `shader-f16`: f16 tensors are stored two values per
// 32-bit word, and `unpack2x16float` is core WGSL. Adapters without f16 arithmetic keep their
// weights in f16 this way and widen each one where it is used. Element i of the input goes to
// element i of the output, so a strided view keeps its strides.

struct WidenInfo {
    // f16 values to widen.
    count: u32,
    // Words covered by one row of the 2-D dispatch (workgroups along x · 64).
    words_per_row: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> packed: array<u32>;
@group(0) @binding(1) var<storage, read_write> wide: array<f32>;
@group(0) @binding(2) var<uniform> widen_info: WidenInfo;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let word = id.y * widen_info.words_per_row + id.x;
    let first = 2u * word;
    if (first >= widen_info.count) {
        return;
    }
    let pair = unpack2x16float(packed[word]);
    wide[first] = pair.x;
    if (first + 1u < widen_info.count) {
        wide[first + 1u] = pair.y;
    }
}

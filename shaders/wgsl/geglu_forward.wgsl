// GEGLU as one op, forward: the feed-forward's projection [rows, 2W] (hidden ‖ gate) to
// hidden · gelu(gate) [rows, W], in one pass with no temporaries. GELU is the exact one
// (erf), as the reference's `F.gelu`.

@group(0) @binding(0) var<storage, read_write> projected: array<T>;
@group(0) @binding(1) var<storage, read_write> gated: array<T>;
@group(0) @binding(2) var<uniform> info: GegluInfo;

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.y * info.per_dispatch_row + id.x;
    if (i >= info.count) {
        return;
    }
    let row = i / info.width;
    let col = i - row * info.width;
    let hidden = f32(projected[2u * row * info.width + col]);
    let gate = f32(projected[(2u * row + 1u) * info.width + col]);
    gated[i] = T(hidden * gelu(gate));
}

// GEGLU as one op, forward: the feed-forward's projection [rows, 2W] (hidden ‖ gate) to
// hidden · gelu(gate) [rows, W], in one pass with no temporaries. GELU is the exact one
// (erf), as the reference's `F.gelu`; arithmetic in f32 whatever the storage.
alias T = f32;

struct GegluInfo {
    // Outputs: rows · W.
    count: u32,
    // W, the output width (half the projection's).
    width: u32,
    // Outputs covered by one row of the 2-D dispatch (workgroups along x · 64).
    per_dispatch_row: u32,
    pad0: u32,
}

@group(0) @binding(0) var<storage, read_write> projected: array<T>;
@group(0) @binding(1) var<storage, read_write> gated: array<T>;
@group(0) @binding(2) var<uniform> info: GegluInfo;

// erf by Abramowitz & Stegun 7.1.26 (absolute error under 1.5e-7); WGSL has no erf.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t;
    let y = 1.0 - poly * exp(-a * a);
    return select(y, -y, x < 0.0);
}

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

// GEGLU as one op, backward: from the kept projection [rows, 2W] and the output's gradient
// [rows, W], the projection's gradient [rows, 2W]:
//   d hidden = d_out · gelu(gate),   d gate = d_out · hidden · gelu'(gate),
// with the exact derivative gelu'(x) = Φ(x) + x·φ(x). Nothing else is kept from the forward.

@group(0) @binding(0) var<storage, read_write> projected: array<T>;
@group(0) @binding(1) var<storage, read_write> d_gated: array<T>;
@group(0) @binding(2) var<storage, read_write> d_projected: array<T>;
@group(0) @binding(3) var<uniform> info: GegluInfo;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.y * info.per_dispatch_row + id.x;
    if (i >= info.count) {
        return;
    }
    let row = i / info.width;
    let col = i - row * info.width;
    let hidden_at = 2u * row * info.width + col;
    let gate_at = hidden_at + info.width;
    let hidden = f32(projected[hidden_at]);
    let gate = f32(projected[gate_at]);
    let d_out = f32(d_gated[i]);
    // Φ(gate) and φ(gate), the standard normal's distribution and density.
    let cdf = 0.5 * (1.0 + erf_approx(gate * 0.70710678118654752));
    let pdf = 0.39894228040143268 * exp(-0.5 * gate * gate);
    d_projected[hidden_at] = T(d_out * gate * cdf);
    d_projected[gate_at] = T(d_out * hidden * (cdf + gate * pdf));
}

// 2-D convolution, forward: one invocation per output element, its C_in·K·K products summed
// in f32 (bias first), written in the storage type.

@group(0) @binding(0) var<storage, read_write> x: array<T>;
@group(0) @binding(1) var<storage, read_write> weight: array<T>;
@group(0) @binding(2) var<storage, read_write> bias: array<T>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;
@group(0) @binding(4) var<uniform> info: ConvInfo;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let e = id.y * info.per_dispatch_row + id.x;
    if (e >= info.count) {
        return;
    }
    let ox = e % info.out_w;
    let oy = (e / info.out_w) % info.out_h;
    let co = (e / (info.out_w * info.out_h)) % info.c_out;
    let n = e / (info.out_w * info.out_h * info.c_out);
    var acc = 0.0;
    if (info.has_bias == 1u) {
        acc = f32(bias[co]);
    }
    let k = info.kernel;
    // Input row/column of tap 0, offset by the padding so the arithmetic stays unsigned.
    let y0 = oy * info.stride;
    let x0 = ox * info.stride;
    for (var ci = 0u; ci < info.c_in; ci++) {
        let x_plane = (n * info.c_in + ci) * info.in_h;
        let w_at = (co * info.c_in + ci) * k * k;
        for (var ky = 0u; ky < k; ky++) {
            let iy = y0 + ky;
            if (iy < info.pad_top || iy - info.pad_top >= info.in_h) {
                continue;
            }
            let x_row = (x_plane + iy - info.pad_top) * info.in_w;
            for (var kx = 0u; kx < k; kx++) {
                let ix = x0 + kx;
                if (ix < info.pad_left || ix - info.pad_left >= info.in_w) {
                    continue;
                }
                acc += f32(x[x_row + ix - info.pad_left]) * f32(weight[w_at + ky * k + kx]);
            }
        }
    }
    out[e] = T(acc);
}

// 2-D convolution, backward for the input (the weights are frozen): one invocation per
// input element, gathering every output that read it (no atomics), summed in f32.

@group(0) @binding(0) var<storage, read_write> d_out: array<T>;
@group(0) @binding(1) var<storage, read_write> weight: array<T>;
@group(0) @binding(2) var<storage, read_write> d_x: array<T>;
@group(0) @binding(3) var<uniform> info: ConvInfo;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let e = id.y * info.per_dispatch_row + id.x;
    if (e >= info.count) {
        return;
    }
    let ix = e % info.in_w;
    let iy = (e / info.in_w) % info.in_h;
    let ci = (e / (info.in_w * info.in_h)) % info.c_in;
    let n = e / (info.in_w * info.in_h * info.c_in);
    let k = info.kernel;
    // Output (oy, ox) reads input row oy·stride + ky − pad_top: with py = iy + pad_top,
    // tap ky reaches it from oy = (py − ky) / stride when that divides and is in range.
    let py = iy + info.pad_top;
    let px = ix + info.pad_left;
    var acc = 0.0;
    for (var co = 0u; co < info.c_out; co++) {
        let d_plane = (n * info.c_out + co) * info.out_h;
        let w_at = (co * info.c_in + ci) * k * k;
        for (var ky = 0u; ky < k; ky++) {
            if (ky > py || (py - ky) % info.stride != 0u || (py - ky) / info.stride >= info.out_h) {
                continue;
            }
            let d_row = (d_plane + (py - ky) / info.stride) * info.out_w;
            for (var kx = 0u; kx < k; kx++) {
                if (kx > px || (px - kx) % info.stride != 0u || (px - kx) / info.stride >= info.out_w) {
                    continue;
                }
                acc += f32(d_out[d_row + (px - kx) / info.stride]) * f32(weight[w_at + ky * k + kx]);
            }
        }
    }
    d_x[e] = T(acc);
}

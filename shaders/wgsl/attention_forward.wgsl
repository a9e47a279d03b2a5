// Memory-efficient attention of the video UNet, forward: one invocation per query row,
// online softmax over the row's keys, so no score matrix is ever stored.
// Modes and layouts are described in attention_common.wgsl; lse holds each row's
// log-sum-exp for the backward pass.
// Buffers are declared at load, in the order of `tav_shaders::Kernel::slots`.
// Types, sizes and key indexing come from attention_common.wgsl, prepended at load.

// `state`, per row between passes: the D accumulators, the running max and the running sum.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wg.y * info.rows_per_dispatch_x + wg.x) * 64u + lid;
    let rows = info.videos * info.frames * info.heads * info.tokens;
    if (row >= rows) {
        return;
    }
    let d = HEAD_DIM;
    let width = info.heads * d;
    let i = row % info.tokens;
    let h = (row / info.tokens) % info.heads;
    let n = row / (info.tokens * info.heads);
    let f = n % info.frames;
    let b = n / info.frames;
    let q_at = (n * info.tokens + i) * width + h * d;

    let state_at = row * (d + 2u);
    var acc: array<f32, HEAD_DIM>;
    var running_max = -3.0e38;
    var running_sum = 0.0;
    if (info.first_pass == 1u) {
        for (var x = 0u; x < d; x++) {
            acc[x] = 0.0;
        }
    } else {
        for (var x = 0u; x < d; x++) {
            acc[x] = state[state_at + x];
        }
        running_max = state[state_at + d];
        running_sum = state[state_at + d + 1u];
    }
    let keys = min(key_count(info), info.item_end);
    for (var key = info.item_start; key < keys; key++) {
        let k_at = key_token(info, b, f, i, key) * width + h * d;
        var s = 0.0;
        for (var x = 0u; x < d; x++) {
            s += f32(q[q_at + x]) * f32(k[k_at + x]);
        }
        s *= info.scale;
        let new_max = max(running_max, s);
        let rescale = exp(running_max - new_max);
        let p = exp(s - new_max);
        running_sum = running_sum * rescale + p;
        for (var x = 0u; x < d; x++) {
            acc[x] = acc[x] * rescale + p * f32(v[k_at + x]);
        }
        running_max = new_max;
    }
    if (info.last_pass == 0u) {
        for (var x = 0u; x < d; x++) {
            state[state_at + x] = acc[x];
        }
        state[state_at + d] = running_max;
        state[state_at + d + 1u] = running_sum;
        return;
    }
    for (var x = 0u; x < d; x++) {
        o[q_at + x] = T(acc[x] / running_sum);
    }
    lse[row] = running_max + log(running_sum);
}

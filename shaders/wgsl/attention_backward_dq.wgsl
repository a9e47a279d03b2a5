// Memory-efficient attention, backward for the queries (flash-attention style: scores are
// recomputed from q, k and the saved log-sum-exp). One invocation per query row; also
// writes delta = rowsum(dO ∘ O), which the key/value pass needs.
// Layouts and modes as in attention_forward.wgsl.
// Buffers are declared at load, in the order of `tav_shaders::Kernel::slots`.
// Types, sizes and key indexing come from attention_common.wgsl, prepended at load.

// `state`, per row between passes: the D accumulators of dq.

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

    let state_at = row * d;
    var row_delta = 0.0;
    var acc: array<f32, HEAD_DIM>;
    if (info.first_pass == 1u) {
        for (var x = 0u; x < d; x++) {
            row_delta += f32(d_o[q_at + x]) * f32(o[q_at + x]);
            acc[x] = 0.0;
        }
        delta[row] = row_delta;
    } else {
        row_delta = delta[row];
        for (var x = 0u; x < d; x++) {
            acc[x] = state[state_at + x];
        }
    }
    let row_lse = lse[row];
    let keys = min(key_count(info), info.item_end);
    for (var key = info.item_start; key < keys; key++) {
        let k_at = key_token(info, b, f, i, key) * width + h * d;
        var s = 0.0;
        var dp = 0.0;
        for (var x = 0u; x < d; x++) {
            s += f32(q[q_at + x]) * f32(k[k_at + x]);
            dp += f32(d_o[q_at + x]) * f32(v[k_at + x]);
        }
        let p = exp(s * info.scale - row_lse);
        let ds = p * (dp - row_delta);
        for (var x = 0u; x < d; x++) {
            acc[x] += ds * f32(k[k_at + x]);
        }
    }
    if (info.last_pass == 0u) {
        for (var x = 0u; x < d; x++) {
            state[state_at + x] = acc[x];
        }
        return;
    }
    for (var x = 0u; x < d; x++) {
        d_q[q_at + x] = T(acc[x] * info.scale);
    }
}

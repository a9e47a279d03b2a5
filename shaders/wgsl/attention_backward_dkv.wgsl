// Memory-efficient attention, backward for the keys and values. One invocation per key row
// (a token of one frame, one head): it gathers every query that attended to it, so no
// atomics are needed. In sparse-causal mode frame g is seen by every frame (as frame 0,
// when g = 0) and by frame g+1 (as its previous frame); a key seen twice by the same query
// (frames 0 and 1 look at frame 0 twice) counts twice, as in the reference.
// Needs lse from the forward pass and delta from attention_backward_dq.wgsl.
// Buffers are declared at load, in the order of `tav_shaders::Kernel::slots`.
// Types, sizes and key indexing come from attention_common.wgsl, prepended at load.

// `state`, per row between passes: the D accumulators of dk, then those of dv.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wg.y * info.rows_per_dispatch_x + wg.x) * 64u + lid;
    let rows = info.videos * info.frames * info.heads * info.tokens;
    if (row >= rows) {
        return;
    }
    let d = HEAD_DIM;
    let width = info.heads * d;
    let j = row % info.tokens;
    let h = (row / info.tokens) % info.heads;
    let n = row / (info.tokens * info.heads);
    let g = n % info.frames;
    let b = n / info.frames;
    let k_at = (n * info.tokens + j) * width + h * d;

    let state_at = row * 2u * d;
    var acc_k: array<f32, HEAD_DIM>;
    var acc_v: array<f32, HEAD_DIM>;
    for (var x = 0u; x < d; x++) {
        if (info.first_pass == 1u) {
            acc_k[x] = 0.0;
            acc_v[x] = 0.0;
        } else {
            acc_k[x] = state[state_at + x];
            acc_v[x] = state[state_at + d + x];
        }
    }
    // Items are the queries (frame f, token t) in order, f·queries_per_frame + t; this pass
    // takes [item_start, item_end). Temporal attention pairs token j only with token j of
    // the other frames.
    let queries_per_frame = select(info.tokens, 1u, info.mode == 1u);
    let items = min(info.frames * queries_per_frame, info.item_end);
    let f_end = select(0u, (items - 1u) / queries_per_frame + 1u, items > info.item_start);
    for (var f = info.item_start / queries_per_frame; f < f_end; f++) {
        let count = multiplicity(info, f, g);
        if (count == 0u) {
            continue;
        }
        let qn = b * info.frames + f;
        let t_start = max(f * queries_per_frame, info.item_start) - f * queries_per_frame;
        let t_end = min((f + 1u) * queries_per_frame, items) - f * queries_per_frame;
        for (var t = t_start; t < t_end; t++) {
            let i = select(t, j, info.mode == 1u);
            let q_row = (qn * info.heads + h) * info.tokens + i;
            let q_at = (qn * info.tokens + i) * width + h * d;
            var s = 0.0;
            var dp = 0.0;
            for (var x = 0u; x < d; x++) {
                s += f32(q[q_at + x]) * f32(k[k_at + x]);
                dp += f32(d_o[q_at + x]) * f32(v[k_at + x]);
            }
            let p = f32(count) * exp(s * info.scale - lse[q_row]);
            let ds = p * (dp - delta[q_row]);
            for (var x = 0u; x < d; x++) {
                acc_v[x] += p * f32(d_o[q_at + x]);
                acc_k[x] += ds * f32(q[q_at + x]);
            }
        }
    }
    if (info.last_pass == 0u) {
        for (var x = 0u; x < d; x++) {
            state[state_at + x] = acc_k[x];
            state[state_at + d + x] = acc_v[x];
        }
        return;
    }
    for (var x = 0u; x < d; x++) {
        d_k[k_at + x] = T(acc_k[x] * info.scale);
        d_v[k_at + x] = T(acc_v[x]);
    }
}

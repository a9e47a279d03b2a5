// Attention (sparse-causal or temporal), backward for the queries, tiled as
// attention_tiled_forward.wgsl (and unrolled at load the same way: `$c` over the
// invocation's vec4s of the head, `$k` over a group of keys; LANES invocations per row with
// subgroups): one workgroup per tile of query rows sharing keys, K and V staged TILE keys at
// a time in workgroup memory; each invocation holds its query (pre-scaled), its output gradient and
// its dq accumulators in registers. Scores are recomputed from the saved log-sum-exp; the
// first pass also writes delta = rowsum(dO ∘ O), which the key/value kernel needs.
// Buffers are declared at load, in the order of `tav_shaders::Kernel::slots`.

// `state`, per row between passes: 4·HEAD_VECS accumulators of dq.

@compute @workgroup_size(INVOCATIONS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = row_tile(info, wg.y * info.rows_per_dispatch_x + wg.x);
    let place = tile_row(info, tile, lid / LANES);
    let i = place.i;
    let lane_base = lid % LANES * LANE_VECS;
    let in_range = place.valid;
    let width = info.heads * HEAD_DIM;
    let n = tile.b * info.frames + place.f;
    let row = (n * info.heads + tile.h) * info.tokens + i;
    let q_at = (n * info.tokens + i) * width + tile.h * HEAD_DIM;
    let state_at = row * 4u * HEAD_VECS;
    // Rows past the tokens read a valid row (and write nothing).
    let q_read = select(0u, q_at, in_range);
    let row_read = select(0u, row, in_range);

    var query$c = q_vec(q_read, $cu) * info.scale;
    var grad_out$c = d_o_vec(q_read, $cu);
    var acc$c = vec4<f32>(0.0);
    let row_lse = lse[row_read];
    var row_delta = 0.0;
    if (info.first_pass == 1u) {
        row_delta += dot(grad_out$c, o_vec(q_read, $cu));
        row_delta = lanes_sum(row_delta);
        if (in_range && lane_base == 0u) {
            delta[row] = row_delta;
        }
    } else {
        row_delta = delta[row_read];
        if (in_range) {
            acc$c = state_vec(state_at, $cu);
        }
    }

    let keys = min(key_count(info), info.item_end);
    let step = staged_per_row(info);
    for (var start = info.item_start; start < keys; start += step) {
        stage_keys(tile, start, keys, lid);
        workgroupBarrier();
        for (var j = 0u; j < step; j += KEY_GROUP) {
            // Slots past the row's run (temporal) are read but masked.
            let slot$k = select(j + $ku, min(place.slot + j + $ku, TILE - 1u), TEMPORAL);
            var s$k = 0.0;
            var dp$k = 0.0;
            s$k += dot(query$c, vec4<f32>(k_tile[slot$k * HEAD_VECS + $cu]));
            dp$k += dot(grad_out$c, vec4<f32>(v_tile[slot$k * HEAD_VECS + $cu]));
            s$k = lanes_sum(s$k);
            dp$k = lanes_sum(dp$k);
            let ds$k = select(0.0, exp(s$k - row_lse) * (dp$k - row_delta), (!TEMPORAL || j + $ku < step) && start + j + $ku < keys);
            acc$c += ds$k * vec4<f32>(k_tile[slot$k * HEAD_VECS + $cu]);
        }
        workgroupBarrier();
    }

    if (!in_range) {
        return;
    }
    if (info.last_pass == 0u) {
        state_store(state_at, $cu, acc$c);
        return;
    }
    d_q_store(q_at, $cu, acc$c * info.scale);
}

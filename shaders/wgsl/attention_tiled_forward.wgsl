// Attention, forward, tiled as FlashAttention-2: one workgroup per tile of query rows whose
// keys are shared (attention_common.wgsl: sparse-causal, TILE_ROWS tokens of one frame and
// head, all seeing the same 2L keys, frame 0 ‖ the previous frame; temporal, the frames of a
// few tokens, each token's rows seeing that token's F keys). K and V are staged TILE keys at
// a time in workgroup memory and read from there. Each invocation holds its query (pre-scaled) and
// its accumulators in registers, and rescales its online softmax once per group of
// KEY_GROUP keys. lse holds each row's log-sum-exp for the backward pass. Passes and row
// numbering as in attention_forward.wgsl.
//
// Unrolled at load: a line with `$c` is written once per vec4 of the head that the invocation
// holds (c = 0 … LANE_VECS−1, the head's vec4 `$cu` = lane_base + c; the head is padded with
// zeros to a multiple of 4), a line with `$k` once per key of a group (k = 0 … KEY_GROUP−1),
// a line with both once per pair. So q and the accumulators are plain variables, never an
// indexed array, on every compiler. With subgroups, LANES invocations (adjacent in a
// subgroup) share a row, each holding LANE_VECS of its vec4s, and sum their partial scores
// with `lanes_sum`; without, LANES is 1 and an invocation holds the whole head.
// Buffers are declared at load, in the order of `tav_shaders::Kernel::slots`.

// `state`, per row between passes: 4·HEAD_VECS accumulators, the running max and the running sum.

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
    let state_at = row * (4u * HEAD_VECS + 2u);
    // Rows past the tokens read a valid row (and write nothing).
    let q_read = select(0u, q_at, in_range);
    let resumed = in_range && info.first_pass == 0u;

    var query$c = q_vec(q_read, $cu) * info.scale;
    var acc$c = vec4<f32>(0.0);
    var running_max = -3.0e38;
    var running_sum = 0.0;
    if (resumed) {
        acc$c = state_vec(state_at, $cu);
        running_max = state[state_at + 4u * HEAD_VECS];
        running_sum = state[state_at + 4u * HEAD_VECS + 1u];
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
            s$k += dot(query$c, vec4<f32>(k_tile[slot$k * HEAD_VECS + $cu]));
            s$k = lanes_sum(s$k);
            s$k = select(-3.0e38, s$k, (!TEMPORAL || j + $ku < step) && start + j + $ku < keys);
            var group_max = running_max;
            group_max = max(group_max, s$k);
            let rescale = exp(running_max - group_max);
            let p$k = exp(s$k - group_max);
            running_sum *= rescale;
            running_sum += p$k;
            acc$c *= rescale;
            acc$c += p$k * vec4<f32>(v_tile[slot$k * HEAD_VECS + $cu]);
            running_max = group_max;
        }
        workgroupBarrier();
    }

    if (!in_range) {
        return;
    }
    if (info.last_pass == 0u) {
        state_store(state_at, $cu, acc$c);
        if (lane_base == 0u) {
            state[state_at + 4u * HEAD_VECS] = running_max;
            state[state_at + 4u * HEAD_VECS + 1u] = running_sum;
        }
        return;
    }
    o_store(q_at, $cu, acc$c / running_sum);
    if (lane_base == 0u) {
        lse[row] = running_max + log(running_sum);
    }
}

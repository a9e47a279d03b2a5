// Temporal attention, backward for the keys and values, tiled: the key of token i in frame g
// is seen by token i's query in every frame, once, so a workgroup takes key rows as the
// forward takes query rows (row_tile and tile_row in attention_common.wgsl: the frames of a
// few tokens of one video and head) and stages each token's queries, output gradients,
// log-sum-exps and deltas, `staged_per_row` frames of each at a time, in workgroup memory.
// Every key row gathers all of its F queries, so there are no partial sums to add. Each
// invocation holds its key (pre-scaled), value and both accumulators in registers (unrolled
// at load as attention_tiled_forward.wgsl: `$c` over the head's vec4s, `$k` over a group of
// queries; LANES invocations per row with subgroups).
// Buffers are declared at load, in the order of `tav_shaders::Kernel::slots`.

// `state`, per key row between passes: 4·HEAD_VECS accumulators of dk, then of dv.

var<workgroup> q_tile: array<vec4<T>, TILE * HEAD_VECS>;
var<workgroup> d_o_tile: array<vec4<T>, TILE * HEAD_VECS>;
var<workgroup> lse_tile: array<f32, TILE>;
var<workgroup> delta_tile: array<f32, TILE>;

@compute @workgroup_size(INVOCATIONS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = row_tile(info, wg.y * info.rows_per_dispatch_x + wg.x);
    let place = tile_row(info, tile, lid / LANES);
    let lane_base = lid % LANES * LANE_VECS;
    let in_range = place.valid;
    let width = info.heads * HEAD_DIM;
    let n = tile.b * info.frames + place.f;
    let row = (n * info.heads + tile.h) * info.tokens + place.i;
    let k_at = (n * info.tokens + place.i) * width + tile.h * HEAD_DIM;
    let state_at = row * 8u * HEAD_VECS;
    // Rows past the tokens read a valid row (and write nothing).
    let k_read = select(0u, k_at, in_range);

    var key$c = k_vec(k_read, $cu) * info.scale;
    var value$c = v_vec(k_read, $cu);
    var acc_k$c = vec4<f32>(0.0);
    var acc_v$c = vec4<f32>(0.0);
    if (in_range && info.first_pass == 0u) {
        acc_k$c = state_vec(state_at, $cu);
        acc_v$c = state_vec(state_at + 4u * HEAD_VECS, $cu);
    }

    let queries = min(info.frames, info.item_end);
    let step = staged_per_row(info);
    for (var start = info.item_start; start < queries; start += step) {
        for (var e = lid; e < TILE * HEAD_VECS; e += INVOCATIONS) {
            let token = staged_token(info, tile, start, queries, e / HEAD_VECS);
            var qv = vec4<f32>();
            var dv = vec4<f32>();
            if (token != NO_ROW) {
                let at = token * width + tile.h * HEAD_DIM;
                qv = q_vec(at, e % HEAD_VECS);
                dv = d_o_vec(at, e % HEAD_VECS);
            }
            q_tile[e] = vec4<T>(qv);
            d_o_tile[e] = vec4<T>(dv);
        }
        for (var t = lid; t < TILE; t += INVOCATIONS) {
            let token = staged_token(info, tile, start, queries, t);
            // Token row n·L + i → statistics row (n·H + h)·L + i.
            let stats = (token / info.tokens * info.heads + tile.h) * info.tokens + token % info.tokens;
            let stats_read = select(stats, 0u, token == NO_ROW);
            lse_tile[t] = select(lse[stats_read], 0.0, token == NO_ROW);
            delta_tile[t] = select(delta[stats_read], 0.0, token == NO_ROW);
        }
        workgroupBarrier();
        for (var j = 0u; j < step; j += KEY_GROUP) {
            // Slots past the row's run are read but masked.
            let slot$k = min(place.slot + j + $ku, TILE - 1u);
            var s$k = 0.0;
            var dp$k = 0.0;
            s$k += dot(key$c, vec4<f32>(q_tile[slot$k * HEAD_VECS + $cu]));
            dp$k += dot(value$c, vec4<f32>(d_o_tile[slot$k * HEAD_VECS + $cu]));
            s$k = lanes_sum(s$k);
            dp$k = lanes_sum(dp$k);
            let p$k = select(0.0, exp(s$k - lse_tile[slot$k]), j + $ku < step && start + j + $ku < queries);
            let ds$k = p$k * (dp$k - delta_tile[slot$k]);
            acc_v$c += p$k * vec4<f32>(d_o_tile[slot$k * HEAD_VECS + $cu]);
            acc_k$c += ds$k * vec4<f32>(q_tile[slot$k * HEAD_VECS + $cu]);
        }
        workgroupBarrier();
    }

    if (!in_range) {
        return;
    }
    if (info.last_pass == 0u) {
        state_store(state_at, $cu, acc_k$c);
        state_store(state_at + 4u * HEAD_VECS, $cu, acc_v$c);
        return;
    }
    d_k_store(k_at, $cu, acc_k$c * info.scale);
    d_v_store(k_at, $cu, acc_v$c);
}

// Sparse-causal attention, backward for the keys and values, tiled: one workgroup per tile
// of TILE_ROWS key rows of one frame and head and one job of query frames (see key_jobs in
// attention_common.wgsl): frame g ≥ 1 is seen by frame g+1's queries only, frame 0 by every
// frame's, split in chunks of FRAME_CHUNK frames whose sums go to `partials` and are added
// by attention_frame_zero_reduce.wgsl (no atomics; with one chunk they are written in
// place). The job's queries, their output gradients, log-sum-exps and deltas are staged
// TILE at a time in workgroup memory; each invocation holds its key (pre-scaled), value and
// both accumulators in registers (unrolled at load as attention_tiled_forward.wgsl: `$c`
// over the head's vec4s, `$k` over a group of queries). A key seen twice by the same query
// (frames 0 and 1 see frame 0 twice) counts twice, as in the reference.
// Buffers are declared at load, in the order of `tav_shaders::Kernel::slots`.

// `partials`: frame 0's per-chunk sums, [chunk, video, token, H·D] for dk, then the same for dv.
// `state`, per key row and job between passes: 4·HEAD_VECS accumulators of dk, then of dv.

var<workgroup> q_tile: array<vec4<T>, TILE * HEAD_VECS>;
var<workgroup> d_o_tile: array<vec4<T>, TILE * HEAD_VECS>;
var<workgroup> lse_tile: array<f32, TILE>;
var<workgroup> delta_tile: array<f32, TILE>;

@compute @workgroup_size(INVOCATIONS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Workgroups run over key tiles, heads, videos, then jobs: frame 0's longer jobs first.
    let index = wg.y * info.rows_per_dispatch_x + wg.x;
    let key_tiles = (info.tokens + TILE_ROWS - 1u) / TILE_ROWS;
    let h = (index / key_tiles) % info.heads;
    let b = (index / (key_tiles * info.heads)) % info.videos;
    let job = index / (key_tiles * info.heads * info.videos);
    let valid = job < key_jobs(info);
    let chunks = frame_zero_chunks(info);
    let zero = job < chunks;
    let g = select(job + 1u - chunks, 0u, zero);
    let f_start = select(g + 1u, job * FRAME_CHUNK, zero);
    let f_end = select(min(g + 2u, info.frames), min(f_start + FRAME_CHUNK, info.frames), zero);
    // The job's queries, (frame − f_start)·L + token; none for the last frame's keys.
    let items = select(0u, (f_end - f_start) * info.tokens, valid && f_end > f_start);

    let j = (index % key_tiles) * TILE_ROWS + lid / LANES;
    let lane_base = lid % LANES * LANE_VECS;
    let in_range = valid && j < info.tokens;
    let width = info.heads * HEAD_DIM;
    let k_at = ((b * info.frames + g) * info.tokens + j) * width + h * HEAD_DIM;
    let job_row = ((job * info.videos + b) * info.heads + h) * info.tokens + j;
    let state_at = job_row * 8u * HEAD_VECS;
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

    let end = min(items, info.item_end);
    var start = info.item_start;
    while (start < end) {
        // A staged tile stays within one query frame.
        let f = f_start + start / info.tokens;
        let t0 = start % info.tokens;
        let count = min(min(TILE, info.tokens - t0), end - start);
        let qn = b * info.frames + f;
        for (var e = lid; e < TILE * HEAD_VECS; e += INVOCATIONS) {
            let t = e / HEAD_VECS;
            var qv = vec4<f32>();
            var dv = vec4<f32>();
            if (t < count) {
                let at = (qn * info.tokens + t0 + t) * width + h * HEAD_DIM;
                qv = q_vec(at, e % HEAD_VECS);
                dv = d_o_vec(at, e % HEAD_VECS);
            }
            q_tile[e] = vec4<T>(qv);
            d_o_tile[e] = vec4<T>(dv);
        }
        for (var t = lid; t < TILE; t += INVOCATIONS) {
            let q_row = (qn * info.heads + h) * info.tokens + t0 + t;
            lse_tile[t] = select(0.0, lse[q_row], t < count);
            delta_tile[t] = select(0.0, delta[q_row], t < count);
        }
        workgroupBarrier();
        let times = f32(multiplicity(info, f, g));
        for (var t = 0u; t < TILE; t += KEY_GROUP) {
            var s$k = 0.0;
            var dp$k = 0.0;
            s$k += dot(key$c, vec4<f32>(q_tile[(t + $ku) * HEAD_VECS + $cu]));
            dp$k += dot(value$c, vec4<f32>(d_o_tile[(t + $ku) * HEAD_VECS + $cu]));
            s$k = lanes_sum(s$k);
            dp$k = lanes_sum(dp$k);
            let p$k = select(0.0, times * exp(s$k - lse_tile[t + $ku]), t + $ku < count);
            let ds$k = p$k * (dp$k - delta_tile[t + $ku]);
            acc_v$c += p$k * vec4<f32>(d_o_tile[(t + $ku) * HEAD_VECS + $cu]);
            acc_k$c += ds$k * vec4<f32>(q_tile[(t + $ku) * HEAD_VECS + $cu]);
        }
        workgroupBarrier();
        start += count;
    }

    if (!in_range) {
        return;
    }
    if (info.last_pass == 0u) {
        state_store(state_at, $cu, acc_k$c);
        state_store(state_at + 4u * HEAD_VECS, $cu, acc_v$c);
        return;
    }
    if (zero && chunks > 1u) {
        let at = ((job * info.videos + b) * info.tokens + j) * width + h * HEAD_DIM;
        let dv_at = chunks * info.videos * info.tokens * width;
        partials_store(at, $cu, acc_k$c * info.scale);
        partials_store(dv_at + at, $cu, acc_v$c);
        return;
    }
    d_k_store(k_at, $cu, acc_k$c * info.scale);
    d_v_store(k_at, $cu, acc_v$c);
}

// Sparse-causal attention, backward for the keys and values, tiled: one workgroup per tile
// of TILE_ROWS key rows of one frame and head and one job of query frames (see key_jobs in
// attention_common.wgsl): frame g ≥ 1 is seen by frame g+1's queries only, frame 0 by every
// frame's, split in chunks of FRAME_CHUNK frames whose sums go to `partials` and are added
// by attention_frame_zero_reduce.wgsl (no atomics; with one chunk they are written in
// place). The job's queries, their output gradients, log-sum-exps and deltas are staged
// TILE at a time in workgroup memory; each invocation holds its key (pre-scaled), value and
// both accumulators in registers. A key seen twice by the same query (frames 0 and 1 see
// frame 0 twice) counts twice, as in the reference.
// Inputs are declared read_write too: burn sub-allocates tensors from shared buffers, and
// wgpu refuses read and read_write views of one buffer in a dispatch.

@group(0) @binding(0) var<storage, read_write> q: array<T>;
@group(0) @binding(1) var<storage, read_write> k: array<T>;
@group(0) @binding(2) var<storage, read_write> v: array<T>;
@group(0) @binding(3) var<storage, read_write> d_o: array<T>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> d_k: array<T>;
@group(0) @binding(7) var<storage, read_write> d_v: array<T>;
// Frame 0's per-chunk sums, [chunk, video, token, H·D] for dk, then the same for dv.
@group(0) @binding(8) var<storage, read_write> partials: array<f32>;
// Per key row and job between passes: 4·HEAD_VECS accumulators of dk, then of dv.
@group(0) @binding(9) var<storage, read_write> state: array<f32>;
@group(0) @binding(10) var<uniform> info: Info;

var<workgroup> q_tile: array<vec4<T>, TILE * HEAD_VECS>;
var<workgroup> d_o_tile: array<vec4<T>, TILE * HEAD_VECS>;
var<workgroup> lse_tile: array<f32, TILE>;
var<workgroup> delta_tile: array<f32, TILE>;

// Elements 4c … 4c+3 of the head at `at`, zero past HEAD_DIM.
fn q_vec(at: u32, c: u32) -> vec4<T> {
    let x = 4u * c;
    return vec4<T>(
        q[at + x],
        select(T(0.0), q[at + x + 1u], x + 1u < HEAD_DIM),
        select(T(0.0), q[at + x + 2u], x + 2u < HEAD_DIM),
        select(T(0.0), q[at + x + 3u], x + 3u < HEAD_DIM),
    );
}

fn d_o_vec(at: u32, c: u32) -> vec4<T> {
    let x = 4u * c;
    return vec4<T>(
        d_o[at + x],
        select(T(0.0), d_o[at + x + 1u], x + 1u < HEAD_DIM),
        select(T(0.0), d_o[at + x + 2u], x + 2u < HEAD_DIM),
        select(T(0.0), d_o[at + x + 3u], x + 3u < HEAD_DIM),
    );
}

fn k_vec(at: u32, c: u32) -> vec4<f32> {
    let x = 4u * c;
    return vec4<f32>(
        f32(k[at + x]),
        select(0.0, f32(k[at + x + 1u]), x + 1u < HEAD_DIM),
        select(0.0, f32(k[at + x + 2u]), x + 2u < HEAD_DIM),
        select(0.0, f32(k[at + x + 3u]), x + 3u < HEAD_DIM),
    );
}

fn v_vec(at: u32, c: u32) -> vec4<f32> {
    let x = 4u * c;
    return vec4<f32>(
        f32(v[at + x]),
        select(0.0, f32(v[at + x + 1u]), x + 1u < HEAD_DIM),
        select(0.0, f32(v[at + x + 2u]), x + 2u < HEAD_DIM),
        select(0.0, f32(v[at + x + 3u]), x + 3u < HEAD_DIM),
    );
}

@compute @workgroup_size(TILE_ROWS)
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

    let j = (index % key_tiles) * TILE_ROWS + lid;
    let in_range = valid && j < info.tokens;
    let width = info.heads * HEAD_DIM;
    let k_at = ((b * info.frames + g) * info.tokens + j) * width + h * HEAD_DIM;
    let job_row = ((job * info.videos + b) * info.heads + h) * info.tokens + j;
    let state_at = job_row * 8u * HEAD_VECS;

    var key: array<vec4<f32>, HEAD_VECS>;
    var value: array<vec4<f32>, HEAD_VECS>;
    var acc_k: array<vec4<f32>, HEAD_VECS>;
    var acc_v: array<vec4<f32>, HEAD_VECS>;
    for (var c = 0u; c < HEAD_VECS; c++) {
        key[c] = vec4<f32>(0.0);
        value[c] = vec4<f32>(0.0);
        acc_k[c] = vec4<f32>(0.0);
        acc_v[c] = vec4<f32>(0.0);
        if (in_range) {
            key[c] = k_vec(k_at, c) * info.scale;
            value[c] = v_vec(k_at, c);
            if (info.first_pass == 0u) {
                let s = state_at + 4u * c;
                let t = s + 4u * HEAD_VECS;
                acc_k[c] = vec4<f32>(state[s], state[s + 1u], state[s + 2u], state[s + 3u]);
                acc_v[c] = vec4<f32>(state[t], state[t + 1u], state[t + 2u], state[t + 3u]);
            }
        }
    }

    let end = min(items, info.item_end);
    var start = info.item_start;
    while (start < end) {
        // A staged tile stays within one query frame.
        let f = f_start + start / info.tokens;
        let t0 = start % info.tokens;
        let count = min(min(TILE, info.tokens - t0), end - start);
        let qn = b * info.frames + f;
        for (var e = lid; e < TILE * HEAD_VECS; e += TILE_ROWS) {
            let t = e / HEAD_VECS;
            var qv = vec4<T>();
            var dv = vec4<T>();
            if (t < count) {
                let at = (qn * info.tokens + t0 + t) * width + h * HEAD_DIM;
                qv = q_vec(at, e % HEAD_VECS);
                dv = d_o_vec(at, e % HEAD_VECS);
            }
            q_tile[e] = qv;
            d_o_tile[e] = dv;
        }
        for (var t = lid; t < TILE; t += TILE_ROWS) {
            let q_row = (qn * info.heads + h) * info.tokens + t0 + t;
            lse_tile[t] = select(0.0, lse[q_row], t < count);
            delta_tile[t] = select(0.0, delta[q_row], t < count);
        }
        workgroupBarrier();
        let times = f32(multiplicity(info, f, g));
        for (var t = 0u; t < TILE; t++) {
            var s = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < HEAD_VECS; c++) {
                s += dot(key[c], vec4<f32>(q_tile[t * HEAD_VECS + c]));
                dp += dot(value[c], vec4<f32>(d_o_tile[t * HEAD_VECS + c]));
            }
            let p = select(0.0, times * exp(s - lse_tile[t]), t < count);
            let ds = p * (dp - delta_tile[t]);
            for (var c = 0u; c < HEAD_VECS; c++) {
                acc_v[c] += p * vec4<f32>(d_o_tile[t * HEAD_VECS + c]);
                acc_k[c] += ds * vec4<f32>(q_tile[t * HEAD_VECS + c]);
            }
        }
        workgroupBarrier();
        start += count;
    }

    if (!in_range) {
        return;
    }
    if (info.last_pass == 0u) {
        for (var c = 0u; c < HEAD_VECS; c++) {
            let s = state_at + 4u * c;
            let t = s + 4u * HEAD_VECS;
            state[s] = acc_k[c].x;
            state[s + 1u] = acc_k[c].y;
            state[s + 2u] = acc_k[c].z;
            state[s + 3u] = acc_k[c].w;
            state[t] = acc_v[c].x;
            state[t + 1u] = acc_v[c].y;
            state[t + 2u] = acc_v[c].z;
            state[t + 3u] = acc_v[c].w;
        }
        return;
    }
    if (zero && chunks > 1u) {
        let at = ((job * info.videos + b) * info.tokens + j) * width + h * HEAD_DIM;
        let dv_at = chunks * info.videos * info.tokens * width;
        for (var x = 0u; x < HEAD_DIM; x++) {
            partials[at + x] = acc_k[x / 4u][x % 4u] * info.scale;
            partials[dv_at + at + x] = acc_v[x / 4u][x % 4u];
        }
        return;
    }
    for (var x = 0u; x < HEAD_DIM; x++) {
        d_k[k_at + x] = T(acc_k[x / 4u][x % 4u] * info.scale);
        d_v[k_at + x] = T(acc_v[x / 4u][x % 4u]);
    }
}

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

// Writes elements 4c … 4c+3 of the head at `at`, those below HEAD_DIM.
fn d_k_store(at: u32, c: u32, x: vec4<f32>) {
    let e = 4u * c;
    d_k[at + e] = T(x.x);
    if (e + 1u < HEAD_DIM) {
        d_k[at + e + 1u] = T(x.y);
    }
    if (e + 2u < HEAD_DIM) {
        d_k[at + e + 2u] = T(x.z);
    }
    if (e + 3u < HEAD_DIM) {
        d_k[at + e + 3u] = T(x.w);
    }
}

fn d_v_store(at: u32, c: u32, x: vec4<f32>) {
    let e = 4u * c;
    d_v[at + e] = T(x.x);
    if (e + 1u < HEAD_DIM) {
        d_v[at + e + 1u] = T(x.y);
    }
    if (e + 2u < HEAD_DIM) {
        d_v[at + e + 2u] = T(x.z);
    }
    if (e + 3u < HEAD_DIM) {
        d_v[at + e + 3u] = T(x.w);
    }
}

// Writes elements 4c … 4c+3 of a head of frame 0's partial sums, those below HEAD_DIM.
fn partials_store(at: u32, c: u32, x: vec4<f32>) {
    let e = 4u * c;
    partials[at + e] = x.x;
    if (e + 1u < HEAD_DIM) {
        partials[at + e + 1u] = x.y;
    }
    if (e + 2u < HEAD_DIM) {
        partials[at + e + 2u] = x.z;
    }
    if (e + 3u < HEAD_DIM) {
        partials[at + e + 3u] = x.w;
    }
}

fn state_vec(at: u32) -> vec4<f32> {
    return vec4<f32>(state[at], state[at + 1u], state[at + 2u], state[at + 3u]);
}

fn state_store(at: u32, x: vec4<f32>) {
    state[at] = x.x;
    state[at + 1u] = x.y;
    state[at + 2u] = x.z;
    state[at + 3u] = x.w;
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
    // Rows past the tokens read a valid row (and write nothing).
    let k_read = select(0u, k_at, in_range);

    var key$c = k_vec(k_read, $cu) * info.scale;
    var value$c = v_vec(k_read, $cu);
    var acc_k$c = vec4<f32>(0.0);
    var acc_v$c = vec4<f32>(0.0);
    if (in_range && info.first_pass == 0u) {
        acc_k$c = state_vec(state_at + 4u * $cu);
        acc_v$c = state_vec(state_at + 4u * (HEAD_VECS + $cu));
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
        for (var t = 0u; t < TILE; t += KEY_GROUP) {
            var s$k = 0.0;
            var dp$k = 0.0;
            s$k += dot(key$c, vec4<f32>(q_tile[(t + $ku) * HEAD_VECS + $cu]));
            dp$k += dot(value$c, vec4<f32>(d_o_tile[(t + $ku) * HEAD_VECS + $cu]));
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
        state_store(state_at + 4u * $cu, acc_k$c);
        state_store(state_at + 4u * (HEAD_VECS + $cu), acc_v$c);
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

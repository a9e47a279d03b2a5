// Sparse-causal attention, backward for the queries, tiled as attention_tiled_forward.wgsl
// (and unrolled at load the same way: `$c` over the head's vec4s, `$k` over a group of
// keys): one workgroup per tile of TILE_ROWS query rows, K and V staged TILE keys at a time
// in workgroup memory; each invocation holds its query (pre-scaled), its output gradient and
// its dq accumulators in registers. Scores are recomputed from the saved log-sum-exp; the
// first pass also writes delta = rowsum(dO ∘ O), which the key/value kernel needs.
// Inputs are declared read_write too: burn sub-allocates tensors from shared buffers, and
// wgpu refuses read and read_write views of one buffer in a dispatch.

@group(0) @binding(0) var<storage, read_write> q: array<T>;
@group(0) @binding(1) var<storage, read_write> k: array<T>;
@group(0) @binding(2) var<storage, read_write> v: array<T>;
@group(0) @binding(3) var<storage, read_write> o: array<T>;
@group(0) @binding(4) var<storage, read_write> d_o: array<T>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read_write> d_q: array<T>;
@group(0) @binding(7) var<storage, read_write> delta: array<f32>;
// Per row between passes: 4·HEAD_VECS accumulators of dq.
@group(0) @binding(8) var<storage, read_write> state: array<f32>;
@group(0) @binding(9) var<uniform> info: Info;

var<workgroup> k_tile: array<vec4<T>, TILE * HEAD_VECS>;
var<workgroup> v_tile: array<vec4<T>, TILE * HEAD_VECS>;

// Elements 4c … 4c+3 of the head at `at`, zero past HEAD_DIM.
fn q_vec(at: u32, c: u32) -> vec4<f32> {
    let x = 4u * c;
    return vec4<f32>(
        f32(q[at + x]),
        select(0.0, f32(q[at + x + 1u]), x + 1u < HEAD_DIM),
        select(0.0, f32(q[at + x + 2u]), x + 2u < HEAD_DIM),
        select(0.0, f32(q[at + x + 3u]), x + 3u < HEAD_DIM),
    );
}

fn o_vec(at: u32, c: u32) -> vec4<f32> {
    let x = 4u * c;
    return vec4<f32>(
        f32(o[at + x]),
        select(0.0, f32(o[at + x + 1u]), x + 1u < HEAD_DIM),
        select(0.0, f32(o[at + x + 2u]), x + 2u < HEAD_DIM),
        select(0.0, f32(o[at + x + 3u]), x + 3u < HEAD_DIM),
    );
}

fn d_o_vec(at: u32, c: u32) -> vec4<f32> {
    let x = 4u * c;
    return vec4<f32>(
        f32(d_o[at + x]),
        select(0.0, f32(d_o[at + x + 1u]), x + 1u < HEAD_DIM),
        select(0.0, f32(d_o[at + x + 2u]), x + 2u < HEAD_DIM),
        select(0.0, f32(d_o[at + x + 3u]), x + 3u < HEAD_DIM),
    );
}

fn k_vec(at: u32, c: u32) -> vec4<T> {
    let x = 4u * c;
    return vec4<T>(
        k[at + x],
        select(T(0.0), k[at + x + 1u], x + 1u < HEAD_DIM),
        select(T(0.0), k[at + x + 2u], x + 2u < HEAD_DIM),
        select(T(0.0), k[at + x + 3u], x + 3u < HEAD_DIM),
    );
}

fn v_vec(at: u32, c: u32) -> vec4<T> {
    let x = 4u * c;
    return vec4<T>(
        v[at + x],
        select(T(0.0), v[at + x + 1u], x + 1u < HEAD_DIM),
        select(T(0.0), v[at + x + 2u], x + 2u < HEAD_DIM),
        select(T(0.0), v[at + x + 3u], x + 3u < HEAD_DIM),
    );
}

// Writes elements 4c … 4c+3 of the head at `at`, those below HEAD_DIM.
fn d_q_store(at: u32, c: u32, x: vec4<f32>) {
    let e = 4u * c;
    d_q[at + e] = T(x.x);
    if (e + 1u < HEAD_DIM) {
        d_q[at + e + 1u] = T(x.y);
    }
    if (e + 2u < HEAD_DIM) {
        d_q[at + e + 2u] = T(x.z);
    }
    if (e + 3u < HEAD_DIM) {
        d_q[at + e + 3u] = T(x.w);
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
    let tile = row_tile(info, wg.y * info.rows_per_dispatch_x + wg.x);
    let i = tile.first_token + lid;
    let in_range = tile.valid && i < info.tokens;
    let width = info.heads * HEAD_DIM;
    let n = tile.b * info.frames + tile.f;
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
        if (in_range) {
            delta[row] = row_delta;
        }
    } else {
        row_delta = delta[row_read];
        if (in_range) {
            acc$c = state_vec(state_at + 4u * $cu);
        }
    }

    let keys = min(2u * info.tokens, info.item_end);
    for (var start = info.item_start; start < keys; start += TILE) {
        for (var e = lid; e < TILE * HEAD_VECS; e += TILE_ROWS) {
            let key = start + e / HEAD_VECS;
            var kv = vec4<T>();
            var vv = vec4<T>();
            if (tile.valid && key < keys) {
                let at = key_token(info, tile.b, tile.f, 0u, key) * width + tile.h * HEAD_DIM;
                kv = k_vec(at, e % HEAD_VECS);
                vv = v_vec(at, e % HEAD_VECS);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();
        for (var j = 0u; j < TILE; j += KEY_GROUP) {
            var s$k = 0.0;
            var dp$k = 0.0;
            s$k += dot(query$c, vec4<f32>(k_tile[(j + $ku) * HEAD_VECS + $cu]));
            dp$k += dot(grad_out$c, vec4<f32>(v_tile[(j + $ku) * HEAD_VECS + $cu]));
            let ds$k = select(0.0, exp(s$k - row_lse) * (dp$k - row_delta), start + j + $ku < keys);
            acc$c += ds$k * vec4<f32>(k_tile[(j + $ku) * HEAD_VECS + $cu]);
        }
        workgroupBarrier();
    }

    if (!in_range) {
        return;
    }
    if (info.last_pass == 0u) {
        state_store(state_at + 4u * $cu, acc$c);
        return;
    }
    d_q_store(q_at, $cu, acc$c * info.scale);
}

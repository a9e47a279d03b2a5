// Sparse-causal attention, forward, tiled as FlashAttention-2: one workgroup per tile of
// TILE_ROWS query rows of one frame and head. Every row of a tile sees the same 2L keys
// (frame 0 ‖ the previous frame), so K and V are staged TILE keys at a time in workgroup
// memory and read by all rows from there. Each invocation holds its query (pre-scaled) and
// its accumulators in registers, and rescales its online softmax once per group of
// KEY_GROUP keys. lse holds each row's log-sum-exp for the backward pass. Passes and row
// numbering as in attention_forward.wgsl.
//
// Unrolled at load: a line with `$c` is written once per vec4 of the head (c = 0 … HEAD_VECS−1;
// the head is padded with zeros to a multiple of 4), a line with `$k` once per key of a
// group (k = 0 … KEY_GROUP−1), a line with both once per pair. So q and the accumulators are
// plain variables, never an indexed array, on every compiler.
// Inputs are declared read_write too: burn sub-allocates tensors from shared buffers, and
// wgpu refuses read and read_write views of one buffer in a dispatch.

@group(0) @binding(0) var<storage, read_write> q: array<T>;
@group(0) @binding(1) var<storage, read_write> k: array<T>;
@group(0) @binding(2) var<storage, read_write> v: array<T>;
@group(0) @binding(3) var<storage, read_write> o: array<T>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
// Per row between passes: 4·HEAD_VECS accumulators, the running max and the running sum.
@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<uniform> info: Info;

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
fn o_store(at: u32, c: u32, x: vec4<f32>) {
    let e = 4u * c;
    o[at + e] = T(x.x);
    if (e + 1u < HEAD_DIM) {
        o[at + e + 1u] = T(x.y);
    }
    if (e + 2u < HEAD_DIM) {
        o[at + e + 2u] = T(x.z);
    }
    if (e + 3u < HEAD_DIM) {
        o[at + e + 3u] = T(x.w);
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
    let state_at = row * (4u * HEAD_VECS + 2u);
    // Rows past the tokens read a valid row (and write nothing).
    let q_read = select(0u, q_at, in_range);
    let resumed = in_range && info.first_pass == 0u;

    var query$c = q_vec(q_read, $cu) * info.scale;
    var acc$c = vec4<f32>(0.0);
    var running_max = -3.0e38;
    var running_sum = 0.0;
    if (resumed) {
        acc$c = state_vec(state_at + 4u * $cu);
        running_max = state[state_at + 4u * HEAD_VECS];
        running_sum = state[state_at + 4u * HEAD_VECS + 1u];
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
            s$k += dot(query$c, vec4<f32>(k_tile[(j + $ku) * HEAD_VECS + $cu]));
            s$k = select(-3.0e38, s$k, start + j + $ku < keys);
            var group_max = running_max;
            group_max = max(group_max, s$k);
            let rescale = exp(running_max - group_max);
            let p$k = exp(s$k - group_max);
            running_sum *= rescale;
            running_sum += p$k;
            acc$c *= rescale;
            acc$c += p$k * vec4<f32>(v_tile[(j + $ku) * HEAD_VECS + $cu]);
            running_max = group_max;
        }
        workgroupBarrier();
    }

    if (!in_range) {
        return;
    }
    if (info.last_pass == 0u) {
        state_store(state_at + 4u * $cu, acc$c);
        state[state_at + 4u * HEAD_VECS] = running_max;
        state[state_at + 4u * HEAD_VECS + 1u] = running_sum;
        return;
    }
    o_store(q_at, $cu, acc$c / running_sum);
    lse[row] = running_max + log(running_sum);
}

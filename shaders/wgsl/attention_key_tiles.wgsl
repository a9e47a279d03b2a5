// The tiled forward and dq kernels' K/V tiles in workgroup memory (put before them at load):
// TILE keys of the head; the workgroup's rows read theirs from here.
var<workgroup> k_tile: array<vec4<T>, TILE * HEAD_VECS>;
var<workgroup> v_tile: array<vec4<T>, TILE * HEAD_VECS>;

// Stages the keys of `tile`'s rows from key `start` (staged_token: every row's for
// sparse-causal, each token's for temporal), zero past `keys` (or for a tile past the
// dispatch's end); each invocation `lid` writes every INVOCATIONS-th vec4. The caller puts a
// barrier after it.
fn stage_keys(tile: Tile, start: u32, keys: u32, lid: u32) {
    let width = info.heads * HEAD_DIM;
    for (var e = lid; e < TILE * HEAD_VECS; e += INVOCATIONS) {
        let token = staged_token(info, tile, start, keys, e / HEAD_VECS);
        var kv = vec4<f32>();
        var vv = vec4<f32>();
        if (token != NO_ROW) {
            let at = token * width + tile.h * HEAD_DIM;
            kv = k_vec(at, e % HEAD_VECS);
            vv = v_vec(at, e % HEAD_VECS);
        }
        k_tile[e] = vec4<T>(kv);
        v_tile[e] = vec4<T>(vv);
    }
}

// Frame 0's key and value gradients in sparse-causal attention: the sum of the key/value
// kernel's per-chunk `partials` (attention_tiled_backward_dkv.wgsl), in chunk order, so the
// result does not depend on scheduling. One invocation per element of frame 0's rows.

@compute @workgroup_size(TILE_ROWS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let per_video = info.tokens * info.heads * HEAD_DIM;
    let e = (wg.y * info.rows_per_dispatch_x + wg.x) * TILE_ROWS + lid;
    if (e >= info.videos * per_video) {
        return;
    }
    let chunks = frame_zero_chunks(info);
    let dv_at = chunks * info.videos * per_video;
    var sum_k = 0.0;
    var sum_v = 0.0;
    for (var chunk = 0u; chunk < chunks; chunk++) {
        sum_k += partials[chunk * info.videos * per_video + e];
        sum_v += partials[dv_at + chunk * info.videos * per_video + e];
    }
    let b = e / per_video;
    let at = b * info.frames * per_video + e % per_video;
    d_k[at] = T(sum_k);
    d_v[at] = T(sum_v);
}

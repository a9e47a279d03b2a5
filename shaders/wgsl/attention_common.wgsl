// Shared by the attention kernels (prepended to each at load; WGSL has no include):
// the storage type, the uniform block, and which keys a query sees. The host puts the
// pipeline's constants before it (HEAD_DIM, HEAD_VECS, TILE_ROWS, TILE, FRAME_CHUNK): the
// head size is fixed per pipeline, so per-row arrays have a constant size and loops a
// constant trip count, and a compiler can keep them in registers.
//
// mode 0, sparse-causal: frame f of a video attends to [frame 0 ‖ frame max(f-1, 0)]
//         (2L keys, read in place; duplicates included, as the reference concatenates).
// mode 1, temporal: token i of frame f attends to token i of every frame of its video.
// Tensors are [(B·F), L, H·D]; rows are ((n·H + h)·L + i) with n = b·F + f.
//
// Passes: a row's loop (over keys, or over queries in the key/value kernel) may be split
// into passes over items [item_start, item_end), with the accumulators kept in `state`
// (f32) between them. Mesa's llvmpipe ends every loop of an invocation once 65,535
// iterations have run in all (LP_MAX_TGSI_LOOP_ITERATIONS, shared by every loop), silently;
// the host splits the work so no pass comes near that. Elsewhere one pass does it all.
alias T = f32;

struct Info {
    videos: u32,
    frames: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    mode: u32,
    scale: f32,
    rows_per_dispatch_x: u32,
    item_start: u32,
    item_end: u32,
    // 1 on the first pass (accumulators start from zero) and the last (results written).
    first_pass: u32,
    last_pass: u32,
}

// Number of keys a query row sees.
fn key_count(info: Info) -> u32 {
    return select(2u * info.tokens, info.frames, info.mode == 1u);
}

// Token row (n·L + j) of the key-th key of query (video b, frame f, token i).
fn key_token(info: Info, b: u32, f: u32, i: u32, key: u32) -> u32 {
    if (info.mode == 1u) {
        return (b * info.frames + key) * info.tokens + i;
    }
    let first_half = key < info.tokens;
    let j = select(key - info.tokens, key, first_half);
    let previous = select(f - 1u, 0u, f == 0u);
    let frame = select(previous, 0u, first_half);
    return (b * info.frames + frame) * info.tokens + j;
}

// How many times frame g appears among the keys of a query of frame f.
fn multiplicity(info: Info, f: u32, g: u32) -> u32 {
    if (info.mode == 1u) {
        return 1u;
    }
    let previous = select(f - 1u, 0u, f == 0u);
    return select(0u, 1u, g == 0u) + select(0u, 1u, previous == g);
}

// The tiled kernels (sparse-causal): a workgroup takes TILE_ROWS rows of one video, frame
// and head (queries in the forward and dq kernels, keys in the key/value kernel) and stages
// what they all read, TILE rows at a time, in workgroup memory.
struct Tile {
    b: u32,
    f: u32,
    h: u32,
    first_token: u32,
    // False past the last tile of the dispatch: such a workgroup stages zeros and writes
    // nothing (it still reaches every barrier).
    valid: bool,
}

// The index-th tile: tiles run over the tokens of a (frame, head), then heads, then frames.
fn row_tile(info: Info, index: u32) -> Tile {
    let per_head = (info.tokens + TILE_ROWS - 1u) / TILE_ROWS;
    let nh = index / per_head;
    let n = nh / info.heads;
    return Tile(
        n / info.frames,
        n % info.frames,
        nh % info.heads,
        (index % per_head) * TILE_ROWS,
        n < info.videos * info.frames,
    );
}

// Frame 0's keys are seen by every frame's queries, frame g's (g ≥ 1) by frame g+1's only:
// the key/value kernel gives frame 0's keys one job per chunk of FRAME_CHUNK query frames,
// each written apart and summed after (no atomics), so no workgroup has F times the work.
fn frame_zero_chunks(info: Info) -> u32 {
    return (info.frames + FRAME_CHUNK - 1u) / FRAME_CHUNK;
}

// Jobs per (video, head, key tile): frame 0's chunks, then frames 1 … F−1.
fn key_jobs(info: Info) -> u32 {
    return frame_zero_chunks(info) + info.frames - 1u;
}

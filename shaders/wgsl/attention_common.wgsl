// Shared by the attention kernels (prepended to each at load; WGSL has no include):
// the storage type, the uniform block, and which keys a query sees. The host puts the
// pipeline's constants before it (HEAD_DIM, HEAD_VECS, TILE_ROWS, TILE, FRAME_CHUNK, …): the
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

// The tiled kernels: a workgroup takes rows that read the same keys (queries, in the
// key/value kernels) and stages those, TILE rows at a time, in workgroup memory.
// Sparse-causal: TILE_ROWS tokens of one video, frame and head, which all see the same 2L
// keys. Temporal: every frame's query of a token sees the same F keys (that token in every
// frame), so a workgroup takes `tile_frames` frames of `tile_tokens` tokens of one video and
// head, and a step stages `staged_per_row` keys of each of its tokens. The mode is fixed per
// pipeline (TEMPORAL) for the tiled kernels, so a compiler folds the other mode away.
struct Tile {
    b: u32,
    // The frame (sparse-causal), the first of the tile's frames (temporal).
    f: u32,
    h: u32,
    first_token: u32,
    // False past the last tile of the dispatch: such a workgroup stages zeros and writes
    // nothing (it still reaches every barrier).
    valid: bool,
}

// No token row: a staged slot past the items or the tile's tokens.
const NO_ROW: u32 = 0xffffffffu;

// Frames of a temporal tile (all of them up to TILE_ROWS); 1 for sparse-causal.
fn tile_frames(info: Info) -> u32 {
    return select(1u, min(info.frames, TILE_ROWS), TEMPORAL);
}

// Tokens of a tile: as many as fill its rows, for temporal within TEMPORAL_TOKENS so every
// token gets at least a group of staged keys per step.
fn tile_tokens(info: Info) -> u32 {
    return select(TILE_ROWS, min(TILE_ROWS / tile_frames(info), TEMPORAL_TOKENS), TEMPORAL);
}

// Keys (queries) staged per step for each row: sparse-causal rows share all TILE; temporal
// rows share their token's.
fn staged_per_row(info: Info) -> u32 {
    return select(TILE, TILE / tile_tokens(info), TEMPORAL);
}

// The index-th tile: tiles run over the tokens of a (frame tile, head), then heads, then
// frame tiles and videos.
fn row_tile(info: Info, index: u32) -> Tile {
    let tokens = tile_tokens(info);
    let per_head = (info.tokens + tokens - 1u) / tokens;
    let frame_tiles = (info.frames + tile_frames(info) - 1u) / tile_frames(info);
    let nh = index / per_head;
    let n = nh / info.heads;
    return Tile(
        n / frame_tiles,
        n % frame_tiles * tile_frames(info),
        nh % info.heads,
        (index % per_head) * tokens,
        n < info.videos * frame_tiles,
    );
}

// The row an invocation takes in its tile (the r-th): its token and frame, the first staged
// slot of its keys, and whether it is a row at all.
struct TileRow {
    i: u32,
    f: u32,
    slot: u32,
    valid: bool,
}

fn tile_row(info: Info, tile: Tile, r: u32) -> TileRow {
    if (TEMPORAL) {
        let s = r / tile_frames(info);
        let i = tile.first_token + s;
        let f = tile.f + r % tile_frames(info);
        let valid = tile.valid && s < tile_tokens(info) && i < info.tokens && f < info.frames;
        return TileRow(i, f, s * staged_per_row(info), valid);
    }
    let i = tile.first_token + r;
    return TileRow(i, tile.f, 0u, tile.valid && i < info.tokens);
}

// The token row (n·L + j) staged in `slot` by the step from item `start` of `tile`'s rows,
// or NO_ROW past `items` or the tile's tokens. Items are keys, or queries in the key/value
// kernels: in temporal attention both are the token's frames.
fn staged_token(info: Info, tile: Tile, start: u32, items: u32, slot: u32) -> u32 {
    if (!tile.valid) {
        return NO_ROW;
    }
    if (TEMPORAL) {
        let s = slot / staged_per_row(info);
        let g = start + slot % staged_per_row(info);
        let i = tile.first_token + s;
        if (s >= tile_tokens(info) || i >= info.tokens || g >= items) {
            return NO_ROW;
        }
        return (tile.b * info.frames + g) * info.tokens + i;
    }
    let key = start + slot;
    if (key >= items) {
        return NO_ROW;
    }
    return key_token(info, tile.b, tile.f, 0u, key);
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

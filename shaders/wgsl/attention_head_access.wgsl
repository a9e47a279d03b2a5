// Written once per buffer a kernel binds (`$buf`, of element type `$elem`) and put before the
// kernel, with the bindings themselves (see `tav_shaders::source`).

// Elements 4c … 4c+3 of the head at `at` of $buf, as f32, zero past HEAD_DIM.
fn $buf_vec(at: u32, c: u32) -> vec4<f32> {
    let x = 4u * c;
    return vec4<f32>(
        f32($buf[at + x]),
        select(0.0, f32($buf[at + x + 1u]), x + 1u < HEAD_DIM),
        select(0.0, f32($buf[at + x + 2u]), x + 2u < HEAD_DIM),
        select(0.0, f32($buf[at + x + 3u]), x + 3u < HEAD_DIM),
    );
}

// Writes elements 4c … 4c+3 of the head at `at` of $buf, those below HEAD_DIM.
fn $buf_store(at: u32, c: u32, value: vec4<f32>) {
    let x = 4u * c;
    $buf[at + x] = $elem(value.x);
    if (x + 1u < HEAD_DIM) {
        $buf[at + x + 1u] = $elem(value.y);
    }
    if (x + 2u < HEAD_DIM) {
        $buf[at + x + 2u] = $elem(value.z);
    }
    if (x + 3u < HEAD_DIM) {
        $buf[at + x + 3u] = $elem(value.w);
    }
}

// Shared by the convolution kernels (prepended to each at load; WGSL has no include): the
// storage type and the uniform block. Products are summed in f32 whatever the storage, so
// f16 activations and weights are convolved without an f32 copy of either (burn's direct
// convolution sums in its input's type).
// Tensors are NCHW, contiguous; weights [C_out, C_in, K, K].
alias T = f32;

struct ConvInfo {
    batch: u32,
    c_in: u32,
    c_out: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    // Zero padding before the first row and column (after the last is implied by out_h, out_w).
    pad_top: u32,
    pad_left: u32,
    // Elements this launch computes (outputs forward, input gradients backward).
    count: u32,
    // Elements covered by one row of the 2-D dispatch (workgroups along x · 64).
    per_dispatch_row: u32,
    has_bias: u32,
    pad0: u32,
    pad1: u32,
}

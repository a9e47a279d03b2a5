// Shared by the GEGLU kernels (prepended to each at load; WGSL has no include): the storage
// type, the uniform block, and erf. Arithmetic is f32 whatever the storage.
alias T = f32;

struct GegluInfo {
    // Outputs: rows · W.
    count: u32,
    // W, the output width (half the projection's).
    width: u32,
    // Outputs covered by one row of the 2-D dispatch (workgroups along x · 64).
    per_dispatch_row: u32,
    pad0: u32,
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error under 1.5e-7); WGSL has no erf.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t;
    let y = 1.0 - poly * exp(-a * a);
    return select(y, -y, x < 0.0);
}

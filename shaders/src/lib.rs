//! WGSL kernels

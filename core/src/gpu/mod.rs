//! The GPU side: tav's WGSL kernels wired into burn, device limits, the memory plan of a job
//! before anything is allocated, and FLOP counts for the benchmark.

pub mod flops;
pub mod footprint;
pub mod kernels;
pub mod limits;
pub mod plan;

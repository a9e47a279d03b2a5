//! Weights and precision, what `model/` builds on: safetensors reading and named tensors into
//! burn parameters (`tensors`), parameter counts (`params`) and f16 storage (`precision`).
//! The loaders that build models from files are in `load/`.

pub mod params;
pub mod precision;
mod tensors;

pub use tensors::*;

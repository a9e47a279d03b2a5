//! Weights and precision: safetensors reading and named tensors into burn parameters
//! (`tensors`), the diffusers folders and single files a model loads from, LoRAs merged on
//! load, tuned-weight deltas, parameter counts and f16 storage.

pub mod checkpoint;
pub mod delta;
pub mod lora;
pub mod params;
pub mod precision;
pub mod single_file;
mod tensors;

pub use tensors::*;

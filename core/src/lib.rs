//! tav core: Tune-A-Video's models, schedules and weight loading on burn + wgpu.
//!
//! Data flows one way: frames → VAE latents → (tuned) 3D UNet → DDIM → frames. This crate
//! does no I/O a browser lacks, except the optional folder reader for native builds.

pub mod adamw;
pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod delta;
pub mod draws;
pub mod edit;
pub mod error;
pub mod flops;
pub mod footprint;
pub mod kernels;
pub mod layers;
pub mod limits;
pub mod lora;
pub mod pack;
pub mod params;
pub mod plan;
pub mod precision;
pub mod pretrain;
pub mod progress;
pub mod recompute;
pub mod resnet;
pub mod schedule;
pub mod score;
pub mod single_file;
pub mod stream;
pub mod tokenizer;
pub mod toyworld;
pub mod transformer;
pub mod tune;
pub mod unet;
pub mod vae;
pub mod weights;

pub use error::{Result, TavError};

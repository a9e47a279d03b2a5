//! tav core: Tune-A-Video's models, schedules and weight loading on burn + wgpu.
//!
//! Data flows one way: frames → VAE latents → (tuned) 3D UNet → DDIM → frames. This crate
//! does no I/O a browser lacks, except the optional folder reader for native builds.
//!
//! The modules are grouped by concern (`model`, `method`, `weights`, `load`, `gpu`, `web`, `toy`);
//! each is also re-exported at the top, so `tav_core::unet` names the same module as
//! `tav_core::model::unet`.

pub mod error;
pub mod gpu;
pub mod load;
pub mod method;
pub mod model;
pub mod toy;
pub mod web;
pub mod weights;

pub use error::{Result, TavError};
pub use gpu::{flops, footprint, kernels, limits, plan};
pub use load::{checkpoint, delta, lora, single_file};
pub use method::{adamw, draws, edit, progress, schedule, tune, window};
pub use model::{
    attention, clip, config, layers, recompute, resnet, tokenizer, transformer, unet, vae,
};
pub use toy::{pretrain, score, toyworld};
pub use web::{pack, stream};
pub use weights::{params, precision};

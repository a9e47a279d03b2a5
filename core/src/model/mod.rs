//! The model: Stable Diffusion v1.x's text encoder, VAE and UNet, inflated to video as
//! Tune-A-Video does (per-frame convolutions, sparse-causal attention, a temporal attention
//! layer in every transformer block), and their configs.

pub mod attention;
pub mod clip;
pub mod config;
pub mod fused;
pub mod layers;
pub mod recompute;
pub mod resnet;
pub mod tokenizer;
pub mod transformer;
pub mod unet;
pub mod vae;

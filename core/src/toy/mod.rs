//! The toy world: procedurally drawn clips with known attributes, pretraining a tiny model
//! on them, and scoring edits against what was asked.

pub mod pretrain;
pub mod score;
pub mod toyworld;

//! Loading models as users have them: diffusers folders (`checkpoint`), single-file
//! CompVis/A1111 checkpoints (`single_file`), LoRAs merged on load (`lora`) and tuned-weight
//! deltas (`delta`). These build `model/`'s components, so they stand above it; `weights/`
//! (tensors, parameters, precision) stays below.

pub mod checkpoint;
pub mod delta;
pub mod lora;
pub mod single_file;

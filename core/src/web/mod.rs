//! Delivery to the browser: packed f16 models (`pack`) and weights streamed into GPU memory
//! tensor by tensor (`stream`).

pub mod pack;
pub mod stream;

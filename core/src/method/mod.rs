//! The method: the noise schedule and DDIM, one-shot tuning (AdamW on the query projections
//! and temporal layers), inversion and guided editing (whole, or window by window for long
//! clips), the random draws they take, and their progress events.

pub mod adamw;
pub mod draws;
pub mod edit;
pub mod progress;
pub mod schedule;
pub mod tune;
pub mod window;

//! One error type for the whole core. Every message names the file, tensor, shape or limit
//! involved, so a user can act on it without reading code.

use std::fmt;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum TavError {
    #[error("missing file: {path} ({what})")]
    MissingFile { path: String, what: String },

    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },

    #[error("cannot create {path}: {reason}")]
    Write { path: String, reason: String },

    #[error("bad config {path}: {reason}")]
    Config { path: String, reason: String },

    #[error("corrupt or truncated safetensors file {path}: {reason}")]
    CorruptWeights { path: String, reason: String },

    #[error("missing tensor `{tensor}` in {path}")]
    MissingTensor { path: String, tensor: String },

    #[error("shape mismatch for tensor `{tensor}` in {path}: expected {expected}, found {found}")]
    ShapeMismatch {
        path: String,
        tensor: String,
        expected: Shape,
        found: Shape,
    },

    #[error(
        "unsupported dtype {dtype} for tensor `{tensor}` in {path} (supported: F32, F16, BF16, F64, F8_E4M3, F8_E5M2)"
    )]
    UnsupportedDtype {
        path: String,
        tensor: String,
        dtype: String,
    },

    #[error(
        "{path}: tensor `{tensor}` holds NaN or infinity: the weights are damaged (a bad merge or conversion); use another copy"
    )]
    NonFiniteWeights { path: String, tensor: String },

    #[error("tuned weights {path}: {reason}")]
    TunedWeights { path: String, reason: String },

    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: String, reason: String },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("numerical failure: {0}")]
    NonFinite(String),

    #[error("GPU error: {0}")]
    Device(String),

    /// Known before allocating: the job needs more memory than the device has.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
}

pub type Result<T> = std::result::Result<T, TavError>;

/// A tensor shape that prints as `[320, 4, 3, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

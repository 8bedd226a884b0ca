//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running an embedding model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file of the model directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the model directory is missing a field, malformed or inconsistent.
    #[error("{}: {reason}", path.display())]
    Model {
        /// The file (or the directory, when a file is missing).
        path: PathBuf,
        /// What was wrong, in words.
        reason: String,
    },
    /// The model uses something this crate does not run (an architecture, a pooling mode, a
    /// module such as `Dense`).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Bad parameters from the caller, such as a `max_seq_len` the model has no positions for.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed (shapes, missing weights).
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

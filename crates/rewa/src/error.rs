//! The one error type of the library.
//!
//! Variants say what the caller can do about the failure; file errors carry the path.

use std::path::PathBuf;

/// Everything that can go wrong in `rewa`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two things that must share a dimension do not.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimMismatch {
        /// The dimension that was required.
        expected: usize,
        /// The dimension that was given.
        got: usize,
    },
    /// Bad input data or parameters: NaN, empty data, k = 0, a malformed spec.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A file's bytes are not what its format says they must be.
    #[error("{}: corrupt file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong, in words.
        reason: String,
    },
    /// A file written by a format version this build cannot read.
    #[error("{}: format version {found} is not supported (this build reads {supported})", path.display())]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The versions this build reads, in words.
        supported: String,
    },
    /// An operating-system error on a file. The message already holds the OS error's text,
    /// which is also the `source`: printers of error chains should skip a cause whose text
    /// the message before it already ends with (the CLI does).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds an index directory's writer lock.
    #[error("{}: the index is being written by process {pid} (waited {waited_secs} s; give --wait-lock SECONDS to wait longer)", path.display())]
    Locked {
        /// The index directory.
        path: PathBuf,
        /// The holder's process id as it recorded it (0 if unknown).
        pid: u32,
        /// How long this process waited.
        waited_secs: u64,
    },
    /// An index held in memory was read from (or last saved to) a directory whose index has
    /// changed since: saving it would drop the other writer's changes (acknowledged adds,
    /// deletes) and hand out ids again. Open the directory again and re-apply the changes.
    #[error("{}: the index changed since it was read (generation {read}, now {now}): open it again and re-apply your changes", path.display())]
    Stale {
        /// The index directory.
        path: PathBuf,
        /// The generation this index was read at (or last saved as).
        read: u64,
        /// The generation the directory holds now.
        now: u64,
    },
    /// Valid input this build cannot handle, e.g. a feature that is not compiled in.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
    /// `true` for errors caused by the caller's input (as opposed to I/O or corrupt files).
    pub fn is_input_error(&self) -> bool {
        matches!(self, Error::DimMismatch { .. } | Error::InvalidInput(_))
    }
}

/// Shorthand for `Err(Error::InvalidInput(format!(..)))`.
macro_rules! invalid {
    ($($arg:tt)*) => { Err($crate::Error::InvalidInput(format!($($arg)*))) };
}
pub(crate) use invalid;

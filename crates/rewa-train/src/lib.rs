//! Training for rewa's learned encoder, with candle.
//!
//! The core crate `rewa` runs trained models ([`rewa::encode::LearnedTransform`]) without
//! candle; this crate trains them ([`train::train`]) and writes a run directory
//! ([`artifacts::RunDir`]): `model.safetensors` + `config.json` (the model), `log.jsonl` (one
//! line per epoch) and `training.png` (loss and recall curves).

pub mod artifacts;
mod font;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod train;

pub use model::{Mlp, Qat};
pub use train::{
    default_distill, default_lr, train, validate, EpochLog, Init, Observer, Quiet, Supervision,
    TrainConfig, TrainOutcome, MAX_BATCH, MAX_EPOCHS, MAX_HIDDEN, MIN_PART_ROWS,
};

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, I/O, or a corrupt file (from the core crate).
    #[error(transparent)]
    Rewa(#[from] rewa::Error),
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The loss became NaN or infinite.
    #[error(
        "training diverged (loss is not finite) at epoch {epoch}, step {step}; try a lower --lr"
    )]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step in the epoch.
        step: usize,
    },
    /// Drawing the curves failed.
    #[error("plot: {0}")]
    Plot(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

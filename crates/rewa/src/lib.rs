//! rewa compresses dense embeddings into small codes and searches them in stages.
//!
//! Data flows: a file of vectors ([`io`]) -> [`Vectors`] -> fitted [`Encoder`]s (transforms
//! such as [`encode::HadamardTransform`] / [`encode::PcaTransform`], then a quantizer:
//! `flat`, `sign`, `int8`) -> an [`Index`] holding their codes -> a [`Pipeline`] of stages,
//! each rescoring the survivors of the one before -> [`Hit`]s. [`eval`] measures recall
//! against exact search.
//!
//! ```
//! use rewa::{Index, IndexSpec, Metric, SearchParams, testutil};
//! let (base, _, queries, _) = testutil::clusters(20, 50, 64, 0.3, 7);
//! let spec = IndexSpec {
//!     metric: Metric::Cosine,
//!     pipeline: "hadamard256+sign:200,exact:10".parse()?,
//!     seed: 42,
//! };
//! let index = Index::build(&spec, base.view())?;
//! let hits = index.search(queries.row(0), &SearchParams { k: 10, ..Default::default() })?;
//! assert_eq!(hits.len(), 10);
//! # Ok::<(), rewa::Error>(())
//! ```
//!
//! Files are little-endian; this crate supports little-endian hosts only.
#![warn(missing_docs)]

#[cfg(not(target_endian = "little"))]
compile_error!("rewa supports little-endian targets only");

pub mod distance;
pub mod encode;
mod error;
pub mod eval;
pub mod index;
pub mod io;
mod kernels;
pub mod latency;
pub mod linalg;
mod pipeline;
mod rows;
pub mod search;
pub mod simd;
pub mod synth;
pub mod testutil;
mod topk;
pub mod tune;
mod vectors;

pub use distance::Metric;
pub use encode::{Encoder, EncoderSpec};
pub use error::{Error, Result};
pub use index::{Index, IndexSpec, StreamOptions, TextModel};
pub use pipeline::{Pipeline, SearchParams, Stage};
pub use rows::RowFilter;
pub use topk::Hit;
pub use tune::{tune, TuneOptions, TuneReport};
pub use vectors::{normalize, Prepared, Vectors, VectorsRef};

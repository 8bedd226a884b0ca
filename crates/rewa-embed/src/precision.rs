//! The arithmetic the transformer's linear layers run in.

use crate::error::{Error, Result};

/// How the native forward pass computes its linear layers (the matrix products that take
/// most of its time). Layer norm, softmax, GELU, attention and pooling stay in f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 weights and activations (sentence-transformers' own arithmetic). The default.
    #[default]
    F32,
    /// int8 weights (quantized at load, symmetric, one scale per output channel) times int8
    /// activations (symmetric, one scale per token, quantized on the fly), summed exactly in
    /// i32 and scaled back to f32.
    Int8,
}

impl Precision {
    /// The name used on the command line, in Python and in an index's record.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "int8" | "i8" => Ok(Precision::Int8),
            _ => Err(Error::InvalidInput(format!(
                "precision {s:?}: expected f32 or int8"
            ))),
        }
    }
}

//! The text form of encoders: `hadamard256+sign`, `pca64+int8`, `flat`.

use crate::error::{invalid, Error, Result};
use std::fmt;
use std::str::FromStr;

/// One transform of an encoder spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransformSpec {
    /// `hadamard<m>`: subsampled randomized Hadamard transform to `m` dims.
    Hadamard {
        /// Output dimension.
        m: usize,
    },
    /// `pca<m>`: projection on the top `m` principal components.
    Pca {
        /// Output dimension.
        m: usize,
    },
    /// `opq<m>`: a rotation trained for `pq<m>` codes (output dimension = input dimension).
    Opq {
        /// Sub-spaces of the product quantizer it is trained for.
        m: usize,
    },
    /// `learned=DIR`: a model trained by `rewa train`; its output dimension is known once the
    /// model is loaded.
    Learned {
        /// The model directory, as written in the spec.
        path: String,
    },
}

/// The quantizer of an encoder spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum QuantizerSpec {
    /// `pq<m>`: product quantization, `m` sub-spaces of 256 centroids, one byte each.
    Pq {
        /// Sub-spaces (bytes per code).
        m: usize,
    },
    /// `flat`: float32, no compression.
    #[default]
    Flat,
    /// `sign`: one bit per dimension, Hamming distance.
    Sign,
    /// `asign`: the same bits as `sign`, scored asymmetrically: the float query against the
    /// bits (binary rescoring).
    SignAsym,
    /// `int8`: one byte per dimension.
    Int8,
}

/// Transforms followed by one quantizer; the text form joins tokens with `+`.
///
/// ```
/// use rewa::EncoderSpec;
/// let s: EncoderSpec = "hadamard256+sign".parse().unwrap();
/// assert_eq!(s.to_string(), "hadamard256+sign");
/// assert_eq!(s.code_len(768), Some(32));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct EncoderSpec {
    /// Applied in order.
    pub transforms: Vec<TransformSpec>,
    /// Applied last.
    pub quantizer: QuantizerSpec,
}

impl EncoderSpec {
    /// Dimension after the transforms, for input dimension `dim`; `None` when the last
    /// transform is a learned model (its dimension lives in the model).
    pub fn dim_out(&self, dim: usize) -> Option<usize> {
        let mut d = dim;
        for t in &self.transforms {
            d = match t {
                TransformSpec::Hadamard { m } | TransformSpec::Pca { m } => *m,
                TransformSpec::Opq { .. } => d,
                TransformSpec::Learned { .. } => return None,
            };
        }
        Some(d)
    }
    /// Bytes per code for input dimension `dim`; `None` as for [`EncoderSpec::dim_out`].
    pub fn code_len(&self, dim: usize) -> Option<usize> {
        let d = self.dim_out(dim)?;
        Some(match self.quantizer {
            QuantizerSpec::Flat => 4 * d,
            QuantizerSpec::Sign | QuantizerSpec::SignAsym => d.div_ceil(64) * 8,
            QuantizerSpec::Int8 => d,
            QuantizerSpec::Pq { m } => m,
        })
    }
    /// Checks the spec against input dimension `dim` (e.g. PCA cannot add dimensions).
    pub fn check(&self, dim: usize) -> Result<()> {
        let mut d = dim;
        for t in &self.transforms {
            match *t {
                TransformSpec::Pca { m } if m > d => {
                    return invalid!("pca{m} needs input dimension >= {m}, got {d}");
                }
                TransformSpec::Opq { m } if m > d => {
                    return invalid!("opq{m} needs input dimension >= {m}, got {d}");
                }
                TransformSpec::Opq { .. } => {}
                TransformSpec::Hadamard { m } | TransformSpec::Pca { m } => d = m,
                // The model's dimensions are checked when it is loaded.
                TransformSpec::Learned { .. } => return Ok(()),
            }
        }
        if let QuantizerSpec::Pq { m } = self.quantizer {
            if m > d {
                return invalid!(
                    "pq{m} needs input dimension >= {m} (one sub-space per byte), got {d}"
                );
            }
        }
        Ok(())
    }
}

impl fmt::Display for TransformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransformSpec::Hadamard { m } => write!(f, "hadamard{m}"),
            TransformSpec::Pca { m } => write!(f, "pca{m}"),
            TransformSpec::Opq { m } => write!(f, "opq{m}"),
            TransformSpec::Learned { path } => write!(f, "learned={path}"),
        }
    }
}

impl fmt::Display for QuantizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuantizerSpec::Pq { m } => return write!(f, "pq{m}"),
            QuantizerSpec::Flat => "flat",
            QuantizerSpec::Sign => "sign",
            QuantizerSpec::SignAsym => "asign",
            QuantizerSpec::Int8 => "int8",
        })
    }
}

impl fmt::Display for EncoderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.transforms.iter().map(|t| t.to_string()).collect();
        if self.quantizer != QuantizerSpec::Flat || parts.is_empty() {
            parts.push(self.quantizer.to_string());
        }
        f.write_str(&parts.join("+"))
    }
}

fn dim_token(tok: &str, prefix: &str) -> Result<Option<usize>> {
    let Some(num) = tok.strip_prefix(prefix) else {
        return Ok(None);
    };
    match num.parse::<usize>() {
        Ok(m) if (1..=1 << 16).contains(&m) => Ok(Some(m)),
        _ => invalid!(
            "{tok:?}: {prefix} needs an output dimension from 1 to 65536, e.g. {prefix}256"
        ),
    }
}

impl FromStr for EncoderSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return invalid!("empty encoder spec (try flat, hadamard256+sign, pca64+int8)");
        }
        let mut spec = EncoderSpec::default();
        let mut quantizer: Option<QuantizerSpec> = None;
        for tok in s.split('+').map(str::trim) {
            if let Some(q) = quantizer {
                return invalid!("encoder spec {s:?}: {tok:?} follows the quantizer {q}; the quantizer must come last");
            }
            let t = match tok {
                "flat" => {
                    quantizer = Some(QuantizerSpec::Flat);
                    continue;
                }
                "sign" => {
                    quantizer = Some(QuantizerSpec::Sign);
                    continue;
                }
                "asign" => {
                    quantizer = Some(QuantizerSpec::SignAsym);
                    continue;
                }
                "int8" => {
                    quantizer = Some(QuantizerSpec::Int8);
                    continue;
                }
                _ => {
                    if let Some(path) = tok.strip_prefix("learned=") {
                        if path.is_empty() || path.contains(',') {
                            return invalid!("encoder spec {s:?}: learned= needs a model directory, e.g. learned=models/scifact64");
                        }
                        TransformSpec::Learned {
                            path: path.to_string(),
                        }
                    } else if let Some(m) = dim_token(tok, "hadamard")? {
                        TransformSpec::Hadamard { m }
                    } else if let Some(m) = dim_token(tok, "pca")? {
                        TransformSpec::Pca { m }
                    } else if let Some(m) = dim_token(tok, "opq")? {
                        TransformSpec::Opq { m }
                    } else if let Some(m) = dim_token(tok, "pq")? {
                        quantizer = Some(QuantizerSpec::Pq { m });
                        continue;
                    } else {
                        return invalid!(
                            "encoder spec {s:?}: unknown token {tok:?} (known: hadamard<m>, pca<m>, opq<m>, learned=DIR, flat, sign, asign, int8, pq<m>)"
                        );
                    }
                }
            };
            spec.transforms.push(t);
        }
        spec.quantizer = quantizer.unwrap_or_default();
        Ok(spec)
    }
}

impl serde::Serialize for EncoderSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EncoderSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        for s in [
            "flat",
            "sign",
            "int8",
            "hadamard256",
            "hadamard16+sign",
            "hadamard256+asign",
            "pca64+int8",
            "hadamard384+pq32",
            "opq32+pq32",
            "pq8",
            "pca128+hadamard64+sign",
            "learned=models/x+int8",
            "learned=../m/scifact64+sign",
        ] {
            let spec: EncoderSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            assert_eq!(spec.to_string().parse::<EncoderSpec>().unwrap(), spec);
        }
        // `+flat` is the default quantizer and prints without it.
        assert_eq!(
            "hadamard64+flat"
                .parse::<EncoderSpec>()
                .unwrap()
                .to_string(),
            "hadamard64"
        );
    }

    #[test]
    fn bad_specs_are_invalid_input() {
        for s in [
            "",
            "sign+hadamard64",
            "hadamard",
            "hadamard0",
            "pcaX",
            "foo",
            "sign+int8",
            "hadamard64++sign",
            "learned=",
            "learned=m,x",
            "pq0",
            "pq16+sign",
            "hadamard64+pq16+hadamard32",
        ] {
            assert!(
                matches!(s.parse::<EncoderSpec>(), Err(Error::InvalidInput(_))),
                "{s:?} parsed"
            );
        }
    }

    #[test]
    fn code_lengths() {
        let cl = |s: &str, d| s.parse::<EncoderSpec>().unwrap().code_len(d).unwrap();
        assert_eq!(cl("hadamard256+sign", 768), 32);
        assert_eq!(cl("hadamard256+asign", 768), 32);
        assert_eq!(cl("hadamard16+sign", 768), 8); // 16 bits, padded to one u64 word
        assert_eq!(cl("hadamard256+int8", 768), 256);
        assert_eq!(cl("flat", 768), 3072);
        assert_eq!(cl("pca64", 768), 256);
        assert_eq!(cl("hadamard384+pq32", 768), 32);
        assert_eq!(cl("opq16+int8", 384), 384);
        assert!("opq400+pq32"
            .parse::<EncoderSpec>()
            .unwrap()
            .check(384)
            .is_err());
        assert!("hadamard16+pq32"
            .parse::<EncoderSpec>()
            .unwrap()
            .check(768)
            .is_err());
        let l: EncoderSpec = "learned=m+sign".parse().unwrap();
        assert_eq!(l.code_len(768), None);
    }
}

//! The text form of encoders: `hadamard256+sign`, `pca64+int8`, `flat`, and partitioned
//! ones, `ivf1024+opq32+pq32` (the coarse quantizer first; in a pipeline stage it carries the
//! lists probed per query, `ivf1024/16+opq32+pq32:200`).
//!
//! A `learned=` path holding `+`, `,` or `:` (which separate tokens, stages and keeps) is
//! written in double quotes: `learned="models/a+b,c"+sign`. Both the token splitter here and
//! the pipeline's stage splitter skip over quoted text (`EncoderSpec::split_outside_quotes`);
//! a path cannot hold a double quote itself.

use crate::error::{invalid, Error, Result};
use std::fmt;
use std::str::FromStr;

/// The largest `m` a spec token may ask for (output dimension, or pq sub-spaces): the
/// encoded data is `n * m` values, so a typo must not become a huge allocation.
pub const MAX_SPEC_DIM: usize = 1 << 16;

/// Whether a `learned=` path must be quoted to survive the token, stage and keep splitters
/// (and the trimming of tokens).
fn needs_quotes(path: &str) -> bool {
    path.contains(['+', ',', ':']) || path.trim() != path
}

/// Checks a `learned=` path can be written in a spec.
fn check_learned_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return invalid!("learned= needs a model directory, e.g. learned=models/scifact64");
    }
    if path.contains('"') {
        return invalid!("learned={path}: a model directory path cannot hold a double quote");
    }
    Ok(())
}

/// The model directory of a `learned=` token's value: bare, or in double quotes.
fn parse_learned_path(spec: &str, raw: &str) -> Result<String> {
    let path = match raw.strip_prefix('"') {
        Some(rest) => match rest.strip_suffix('"') {
            Some(inner) if !inner.contains('"') => inner,
            _ => {
                return invalid!(
                    "encoder spec {spec:?}: learned={raw}: a quoted path must be one \"...\" with no quote inside"
                )
            }
        },
        None if raw.contains('"') => {
            return invalid!(
                "encoder spec {spec:?}: learned={raw}: quote the whole path, e.g. learned=\"models/a+b\""
            )
        }
        None if raw.contains(',') => {
            return invalid!(
                "encoder spec {spec:?}: learned={raw}: a path with ',' must be quoted, e.g. learned=\"{raw}\""
            )
        }
        None => raw,
    };
    check_learned_path(path).map_err(|e| match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("encoder spec {spec:?}: {m}")),
        other => other,
    })?;
    Ok(path.to_string())
}

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
    /// `learned=DIR` (or `learned="DIR"` when the path holds `+`, `,` or `:`): a model
    /// trained by `rewa train`; its output dimension is known once the model is loaded.
    Learned {
        /// The model directory, without the quotes.
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
    /// `pq<m>s<eta>`: `pq<m>`'s codebooks, codes assigned score-aware (ScaNN's anisotropic
    /// loss, the residual along the vector weighted `eta` times, 1 to 100) for inner-product
    /// search; same bytes and scan.
    PqScore {
        /// Sub-spaces (bytes per code).
        m: usize,
        /// The weight of the residual's component along the vector.
        eta: u16,
    },
    /// `pq<m>x4`: product quantization, `m` sub-spaces of 16 centroids, 4 bits each (two per
    /// byte), scanned with 8-bit tables in registers (FAISS's fast scan); `m` at most 128.
    Pq4 {
        /// Sub-spaces (half a byte each).
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
    /// `asignfs`: the bits of `asign`, scored with 8-bit tables of 4 bits in registers (fast
    /// scan); at most 1,024 bits.
    SignFast,
    /// `rabitq<bits>`: RaBitQ, a random rotation of the residual from the centroid on a grid of
    /// `bits` (1 to 8) per dimension, plus two f32 factors (three for l2); scored by its
    /// unbiased estimator, and by its error bound in a `:bound` stage.
    Rabitq {
        /// Bits per dimension.
        bits: usize,
    },
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
    /// `ivf<nlist>`: codes are kept in `nlist` lists by the nearest coarse centroid, and a
    /// first stage scans only the lists it probes. `None` for a flat (scan-everything) code set.
    pub ivf: Option<usize>,
    /// `ivf<nlist>r`: each vector is encoded as its residual from its list's centroid, and a
    /// query adds its inner product with the centroid (FAISS's `by_residual`); inner-product
    /// metrics and quantizers whose distance is an inner product (`flat`, `int8`, `pq`,
    /// `pq<m>x4`) only.
    pub residual: bool,
    /// Applied in order.
    pub transforms: Vec<TransformSpec>,
    /// Applied last.
    pub quantizer: QuantizerSpec,
}

impl EncoderSpec {
    /// Splits `s` at every `sep` outside double quotes (quotes are kept in the pieces).
    pub(crate) fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
        let mut parts = Vec::new();
        let (mut start, mut quoted) = (0, false);
        for (i, c) in s.char_indices() {
            if c == '"' {
                quoted = !quoted;
            } else if c == sep && !quoted {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
        }
        parts.push(&s[start..]);
        parts
    }

    /// Splits `s` at its last `sep` outside double quotes.
    pub(crate) fn rsplit_once_outside_quotes(s: &str, sep: char) -> Option<(&str, &str)> {
        let mut last = None;
        let mut quoted = false;
        for (i, c) in s.char_indices() {
            if c == '"' {
                quoted = !quoted;
            } else if c == sep && !quoted {
                last = Some(i);
            }
        }
        last.map(|i| (&s[..i], &s[i + sep.len_utf8()..]))
    }

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
            QuantizerSpec::Sign | QuantizerSpec::SignAsym | QuantizerSpec::SignFast => {
                d.div_ceil(64) * 8
            }
            QuantizerSpec::Int8 => d,
            QuantizerSpec::Pq { m } | QuantizerSpec::PqScore { m, .. } => m,
            QuantizerSpec::Pq4 { m } => m.div_ceil(2),
            // cosine and ip; l2 codes hold one more f32 (|x - c|^2)
            QuantizerSpec::Rabitq { bits } => bits * d.div_ceil(8) + 8,
        })
    }
    /// Checks the spec against input dimension `dim` (e.g. PCA cannot add dimensions), and
    /// every `m` against [`MAX_SPEC_DIM`].
    pub fn check(&self, dim: usize) -> Result<()> {
        let size = |name: &str, m: usize| -> Result<()> {
            if (1..=MAX_SPEC_DIM).contains(&m) {
                Ok(())
            } else {
                invalid!("{name}{m}: m must be from 1 to {MAX_SPEC_DIM}")
            }
        };
        if let Some(nlist) = self.ivf {
            size("ivf", nlist)?;
        }
        // `None` after a learned model: its dimensions are checked when it is loaded.
        let mut d = Some(dim);
        for t in &self.transforms {
            match t {
                TransformSpec::Hadamard { m } => {
                    size("hadamard", *m)?;
                    d = Some(*m);
                }
                TransformSpec::Pca { m } => {
                    size("pca", *m)?;
                    if let Some(d) = d.filter(|d| m > d) {
                        return invalid!("pca{m} needs input dimension >= {m}, got {d}");
                    }
                    d = Some(*m);
                }
                TransformSpec::Opq { m } => {
                    size("opq", *m)?;
                    if let Some(d) = d.filter(|d| m > d) {
                        return invalid!("opq{m} needs input dimension >= {m}, got {d}");
                    }
                }
                TransformSpec::Learned { path } => {
                    check_learned_path(path)?;
                    d = None;
                }
            }
        }
        if self.quantizer == QuantizerSpec::SignFast {
            if let Some(d) = d.filter(|&d| d > super::ASIGNFS_MAX_BITS) {
                return invalid!(
                    "asignfs codes hold at most {} bits, got {d} dimensions (put hadamard<m> before it)",
                    super::ASIGNFS_MAX_BITS
                );
            }
        }
        if let QuantizerSpec::Pq4 { m } = self.quantizer {
            if !(1..=super::PQ4_MAX_M).contains(&m) {
                return invalid!("pq{m}x4: m must be from 1 to {}", super::PQ4_MAX_M);
            }
            if let Some(d) = d.filter(|&d| m > d) {
                return invalid!("pq{m}x4 needs input dimension >= {m}, got {d}");
            }
        }
        if let QuantizerSpec::Pq { m } | QuantizerSpec::PqScore { m, .. } = self.quantizer {
            size("pq", m)?;
            if let Some(d) = d.filter(|&d| m > d) {
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
            TransformSpec::Learned { path } if needs_quotes(path) => {
                write!(f, "learned=\"{path}\"")
            }
            TransformSpec::Learned { path } => write!(f, "learned={path}"),
        }
    }
}

impl fmt::Display for QuantizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuantizerSpec::Pq { m } => return write!(f, "pq{m}"),
            QuantizerSpec::PqScore { m, eta } => return write!(f, "pq{m}s{eta}"),
            QuantizerSpec::Pq4 { m } => return write!(f, "pq{m}x4"),
            QuantizerSpec::Rabitq { bits } => return write!(f, "rabitq{bits}"),
            QuantizerSpec::Flat => "flat",
            QuantizerSpec::Sign => "sign",
            QuantizerSpec::SignAsym => "asign",
            QuantizerSpec::Int8 => "int8",
            QuantizerSpec::SignFast => "asignfs",
        })
    }
}

impl EncoderSpec {
    /// The text form, with `ivf<nlist>/<nprobe>` when `nprobe` is given (a stage's form).
    pub(crate) fn fmt_probing(
        &self,
        f: &mut fmt::Formatter<'_>,
        nprobe: Option<usize>,
    ) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        match (self.ivf, nprobe) {
            (Some(nlist), Some(p)) => parts.push(format!(
                "ivf{nlist}{}/{p}",
                if self.residual { "r" } else { "" }
            )),
            (Some(nlist), None) => parts.push(format!(
                "ivf{nlist}{}",
                if self.residual { "r" } else { "" }
            )),
            (None, _) => {}
        }
        let transforms = self.transforms.len();
        parts.extend(self.transforms.iter().map(|t| t.to_string()));
        if self.quantizer != QuantizerSpec::Flat || transforms == 0 {
            parts.push(self.quantizer.to_string());
        }
        f.write_str(&parts.join("+"))
    }

    /// Parses a stage's scorer: an encoder spec whose `ivf<nlist>` token may carry
    /// `/<nprobe>`. Returns the spec and the `nprobe` given.
    pub(crate) fn parse_probing(s: &str) -> Result<(EncoderSpec, Option<usize>)> {
        let s = s.trim();
        let first = EncoderSpec::split_outside_quotes(s, '+')[0].trim();
        let Some((ivf, p)) = first.split_once('/').filter(|_| first.starts_with("ivf")) else {
            return Ok((s.parse()?, None));
        };
        let nprobe = match p.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return invalid!(
                    "{first:?}: the lists probed per query must be a whole number >= 1, e.g. ivf1024/16"
                )
            }
        };
        let rest = &s[first.len()..];
        let spec: EncoderSpec = format!("{ivf}{rest}").parse()?;
        Ok((spec, Some(nprobe)))
    }
}

impl fmt::Display for EncoderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_probing(f, None)
    }
}

fn dim_token(tok: &str, prefix: &str) -> Result<Option<usize>> {
    let Some(num) = tok.strip_prefix(prefix) else {
        return Ok(None);
    };
    match num.parse::<usize>() {
        Ok(m) if (1..=MAX_SPEC_DIM).contains(&m) => Ok(Some(m)),
        _ => {
            invalid!("{tok:?}: {prefix} needs a size m from 1 to {MAX_SPEC_DIM}, e.g. {prefix}256")
        }
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
        for (i, tok) in EncoderSpec::split_outside_quotes(s, '+')
            .into_iter()
            .map(str::trim)
            .enumerate()
        {
            if tok.starts_with("ivf") {
                if i > 0 {
                    return invalid!(
                        "encoder spec {s:?}: {tok:?} must be the first token (the partition comes before transforms)"
                    );
                }
                if tok.contains('/') {
                    return invalid!(
                        "encoder spec {s:?}: {tok:?} names lists to probe, which only a pipeline stage can (e.g. --pipeline {s}:100); a code set is ivf<nlist>"
                    );
                }
                let (tok_n, residual) = match tok.strip_suffix('r') {
                    Some(t) => (t, true),
                    None => (tok, false),
                };
                spec.ivf = dim_token(tok_n, "ivf")?;
                spec.residual = residual;
                continue;
            }
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
                "asignfs" => {
                    quantizer = Some(QuantizerSpec::SignFast);
                    continue;
                }
                _ => {
                    if let Some(raw) = tok.strip_prefix("learned=") {
                        TransformSpec::Learned {
                            path: parse_learned_path(s, raw)?,
                        }
                    } else if let Some(m) = dim_token(tok, "hadamard")? {
                        TransformSpec::Hadamard { m }
                    } else if let Some(m) = dim_token(tok, "pca")? {
                        TransformSpec::Pca { m }
                    } else if let Some(m) = dim_token(tok, "opq")? {
                        TransformSpec::Opq { m }
                    } else if let Some(m) = tok
                        .strip_prefix("pq")
                        .and_then(|r| r.strip_suffix("x4"))
                        .and_then(|r| r.parse::<usize>().ok())
                    {
                        quantizer = Some(QuantizerSpec::Pq4 { m });
                        continue;
                    } else if let Some(b) = tok.strip_prefix("rabitq") {
                        match b.parse::<usize>() {
                            Ok(bits) if (1..=super::RABITQ_MAX_BITS).contains(&bits) => {
                                quantizer = Some(QuantizerSpec::Rabitq { bits });
                                continue;
                            }
                            _ => {
                                return invalid!(
                                    "{tok:?}: rabitq<bits> needs bits per dimension from 1 to {}, e.g. rabitq1 or rabitq4",
                                    super::RABITQ_MAX_BITS
                                )
                            }
                        }
                    } else if let Some((m, eta)) = tok
                        .strip_prefix("pq")
                        .and_then(|r| r.split_once('s'))
                        .and_then(|(m, e)| Some((m.parse::<usize>().ok()?, e.parse::<u16>().ok()?)))
                    {
                        if !(1..=100).contains(&eta) {
                            return invalid!(
                                "{tok:?}: pq<m>s<eta> needs eta from 1 to 100, e.g. pq32s4"
                            );
                        }
                        quantizer = Some(QuantizerSpec::PqScore { m, eta });
                        continue;
                    } else if let Some(m) = dim_token(tok, "pq")? {
                        quantizer = Some(QuantizerSpec::Pq { m });
                        continue;
                    } else {
                        return invalid!(
                            "encoder spec {s:?}: unknown token {tok:?} (known: ivf<nlist> first, hadamard<m>, pca<m>, opq<m>, learned=DIR or learned=\"DIR\", flat, sign, asign, asignfs, int8, pq<m>, pq<m>s<eta>, pq<m>x4, rabitq<bits>)"
                        );
                    }
                }
            };
            spec.transforms.push(t);
        }
        spec.quantizer = quantizer.unwrap_or_default();
        if spec.residual
            && !matches!(
                spec.quantizer,
                QuantizerSpec::Flat
                    | QuantizerSpec::Int8
                    | QuantizerSpec::Pq { .. }
                    | QuantizerSpec::PqScore { .. }
                    | QuantizerSpec::Pq4 { .. }
                    | QuantizerSpec::Rabitq { .. }
            )
        {
            return invalid!(
                "encoder spec {s:?}: residual lists (ivf<nlist>r) need a quantizer whose distance is an inner product: flat, int8, pq<m>, pq<m>x4 or rabitq<bits>"
            );
        }
        if spec.ivf.is_some() && spec.transforms.is_empty() && quantizer.is_none() {
            return invalid!(
                "encoder spec {s:?}: ivf<nlist> needs the codes kept in its lists after it, e.g. ivf1024+flat or ivf1024+pq32"
            );
        }
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
            "ivf1024+flat",
            "ivf64+opq32+pq32",
            "ivf8+hadamard256+sign",
            "ivf64r+pq16",
            "ivf8r+opq16+pq16x4",
            "pq32x4",
            "opq16+pq32x4",
            "hadamard256+asignfs",
            "rabitq1",
            "pca64+rabitq4",
            "ivf16r+rabitq8",
            "opq32+pq32s4",
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
            "learned=\"\"",
            "learned=\"m+sign",
            "learned=\"a\"b\"+sign",
            "learned=a\"b+sign",
            "pq0",
            "pq16+sign",
            "hadamard64+pq16+hadamard32",
            "ivf",
            "ivf0+flat",
            "ivf16",
            "ivf16/4+flat",
            "pq8+ivf16",
            "hadamard64+ivf16+sign",
            "ivf16r+sign",
            "ivf16r+hadamard64+asign",
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

    #[test]
    fn quoted_learned_paths_round_trip_in_specs() {
        for (text, path) in [
            ("learned=\"models/a+b,c\"+sign", "models/a+b,c"),
            ("learned=\"m:1\"+hadamard64+int8", "m:1"),
            ("learned=\" spaced dir \"", " spaced dir "),
            ("learned=plain/dir with space+sign", "plain/dir with space"),
        ] {
            let spec: EncoderSpec = text.parse().unwrap();
            assert_eq!(
                spec.transforms[0],
                TransformSpec::Learned { path: path.into() },
                "{text}"
            );
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.to_string().parse::<EncoderSpec>().unwrap(), spec);
        }
        // a path that needs quotes prints quoted, whichever way it was built
        let spec = EncoderSpec {
            ivf: None,
            residual: false,
            transforms: vec![TransformSpec::Learned {
                path: "x+y,z".into(),
            }],
            quantizer: QuantizerSpec::Sign,
        };
        assert_eq!(spec.to_string(), "learned=\"x+y,z\"+sign");
        assert_eq!(spec.to_string().parse::<EncoderSpec>().unwrap(), spec);
        // a path with a quote cannot be printed, so `check` refuses it
        let q = EncoderSpec {
            ivf: None,
            residual: false,
            transforms: vec![TransformSpec::Learned {
                path: "a\"b".into(),
            }],
            quantizer: QuantizerSpec::Sign,
        };
        assert!(matches!(q.check(8), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn every_size_is_capped() {
        let big = MAX_SPEC_DIM + 1;
        for t in [
            TransformSpec::Hadamard { m: big },
            TransformSpec::Pca { m: usize::MAX },
            TransformSpec::Opq { m: big },
            TransformSpec::Hadamard { m: 0 },
        ] {
            let spec = EncoderSpec {
                ivf: None,
                residual: false,
                transforms: vec![t.clone()],
                quantizer: QuantizerSpec::Sign,
            };
            // an input wide enough that only the cap can refuse it
            let e = spec.check(usize::MAX).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidInput(m) if m.contains("65536")),
                "{t}: {e}"
            );
            assert!(matches!(
                spec.to_string().parse::<EncoderSpec>(),
                Err(Error::InvalidInput(_))
            ));
        }
        for q in [usize::MAX, big, 0] {
            let spec = EncoderSpec {
                ivf: None,
                residual: false,
                transforms: vec![],
                quantizer: QuantizerSpec::Pq { m: q },
            };
            assert!(matches!(
                spec.check(usize::MAX),
                Err(Error::InvalidInput(_))
            ));
            // also after a learned model, whose dimension is not known here
            let l = EncoderSpec {
                ivf: None,
                residual: false,
                transforms: vec![TransformSpec::Learned { path: "m".into() }],
                quantizer: QuantizerSpec::Pq { m: q },
            };
            assert!(matches!(l.check(64), Err(Error::InvalidInput(_))));
        }
        assert!("hadamard99999999999999999999999+sign"
            .parse::<EncoderSpec>()
            .is_err());
        // pq needs one dimension per sub-space; the largest sizes pass
        assert!("pq64".parse::<EncoderSpec>().unwrap().check(32).is_err());
        assert!("hadamard65536+pq65536"
            .parse::<EncoderSpec>()
            .unwrap()
            .check(8)
            .is_ok());
    }

    #[test]
    fn an_index_built_with_a_quoted_learned_path_saves_opens_and_searches() {
        use crate::encode::LearnedTransform;
        use rand::{Rng, SeedableRng};
        let (d, h, m) = (16, 24, 8);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let shapes = LearnedTransform::shapes(d, h, m);
        let t: [Vec<f32>; 8] = std::array::from_fn(|i| {
            let n: usize = shapes[i].iter().product();
            (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect()
        });
        let model = LearnedTransform::from_tensors(d, h, m, 1e-5, t).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mdir = dir.path().join("models/a+b,c: d");
        model.save(&mdir, serde_json::Value::Null).unwrap();
        let text = format!("learned=\"{}\"+sign:40,exact:10", mdir.display());
        let spec = crate::IndexSpec {
            metric: crate::Metric::Cosine,
            pipeline: text.parse().unwrap(),
            seed: 1,
        };
        let mut base = crate::testutil::gaussian(200, d, 4);
        base.normalize();
        let index = crate::Index::build(&spec, base.view()).unwrap();
        let idir = dir.path().join("index");
        index.save(&idir).unwrap();
        std::fs::remove_dir_all(&mdir).unwrap(); // the index carries the weights
        let opened = crate::Index::open(&idir).unwrap();
        let p = crate::SearchParams::default();
        for i in [0, 7, 150] {
            let hits = opened.search(base.row(i), &p).unwrap();
            assert_eq!(hits, index.search(base.row(i), &p).unwrap());
            assert_eq!(hits[0].id as usize, i, "row {i} is not its own nearest");
        }
    }
}

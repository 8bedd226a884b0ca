//! The MLP as candle tensors: seeded initialisation, the training forward pass (dropout,
//! input noise, quantization-aware outputs), and export to the core crate's
//! [`LearnedTransform`], which runs the same arithmetic without candle.

use crate::ops;
use candle_core::{Device, Result, Tensor, Var, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rewa::encode::{LearnedTransform, Transform};

/// Which quantizer the outputs are trained for (`--qat`, a quantizer token of an encoder
/// spec). `sign` is scored by Hamming distance, so both sides of the training similarity are
/// quantized; every other code is scored asymmetrically (the float query against the code),
/// so only the document side is, as the index will score it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qat {
    /// One bit per dimension, Hamming: forward `sign(z) / sqrt(m)` on both sides, backward
    /// the identity (straight-through estimator).
    Sign,
    /// `asign`: the same bits, the float query against `sign(z - mean)` (straight-through).
    Asign,
    /// One byte per dimension (255 levels over the batch's range per dimension), the float
    /// query against the rounded document (straight-through).
    Int8,
    /// `rabitq<bits>`: the document is the vector RaBitQ's estimator scores it as,
    /// `c + f R^T g` (straight-through), from the quantizer itself (seeded rotation, the
    /// centroid refitted on the outputs every epoch), which the model directory keeps.
    Rabitq {
        /// Bits per dimension, 1 to 8.
        bits: usize,
    },
    /// `pq<m>`: product quantization with codebooks trained jointly (JPQ-style): each
    /// document is replaced by its centroids (hard assignment, nearest centroid), the ranking
    /// loss trains the codebooks through them and the queries' encoder through the float
    /// query; a commitment term keeps outputs near their centroids. The codebooks start from
    /// k-means on the first epoch's outputs.
    Pq {
        /// Sub-spaces (bytes per code).
        m: usize,
    },
}

impl Qat {
    /// The quantizer token the codes are stored with.
    pub fn spec(&self) -> rewa::encode::QuantizerSpec {
        use rewa::encode::QuantizerSpec as Q;
        match *self {
            Qat::Sign => Q::Sign,
            Qat::Asign => Q::SignAsym,
            Qat::Int8 => Q::Int8,
            Qat::Rabitq { bits } => Q::Rabitq { bits },
            Qat::Pq { m } => Q::Pq { m },
        }
    }
}

impl std::fmt::Display for Qat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.spec())
    }
}

impl std::str::FromStr for Qat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        use rewa::encode::QuantizerSpec as Q;
        let bad = || {
            format!(
                "--qat {s:?}: one quantizer token the outputs will be stored as: sign, asign, int8, rabitq<bits> (1-8) or pq<m> (put transforms such as opq in --encoder, not here)"
            )
        };
        let spec: rewa::EncoderSpec = s.parse().map_err(|e| format!("{}: {e}", bad()))?;
        if !spec.transforms.is_empty() || spec.ivf.is_some() {
            return Err(bad());
        }
        Ok(match spec.quantizer {
            Q::Sign => Qat::Sign,
            Q::SignAsym => Qat::Asign,
            Q::Int8 => Qat::Int8,
            Q::Rabitq { bits } => Qat::Rabitq { bits },
            Q::Pq { m } => Qat::Pq { m },
            _ => return Err(bad()),
        })
    }
}

impl serde::Serialize for Qat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Qat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Linear(d, h) -> LayerNorm -> GELU -> Dropout -> Linear(h, m) -> LayerNorm -> L2 norm.
pub struct Mlp {
    /// In [`rewa::encode::TENSOR_NAMES`] order.
    pub vars: Vec<Var>,
    pub dim_in: usize,
    pub hidden: usize,
    pub dim_out: usize,
    pub eps: f64,
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
}

impl Mlp {
    /// Weights and biases uniform in `±1/sqrt(fan_in)` (PyTorch's `Linear` default), layer
    /// norms at scale 1 and shift 0, all drawn from `rng`. candle's own initialisers use an
    /// unseeded generator, so the variables are created from these values directly.
    pub fn new(
        dim_in: usize,
        hidden: usize,
        dim_out: usize,
        eps: f64,
        rng: &mut ChaCha8Rng,
        dev: &Device,
    ) -> Result<Mlp> {
        let (d, h, m) = (dim_in, hidden, dim_out);
        let b1 = 1.0 / (d as f32).sqrt();
        let b2 = 1.0 / (h as f32).sqrt();
        let values: [(Vec<f32>, Vec<usize>); 8] = [
            (uniform(rng, h * d, b1), vec![h, d]),
            (uniform(rng, h, b1), vec![h]),
            (vec![1.0; h], vec![h]),
            (vec![0.0; h], vec![h]),
            (uniform(rng, m * h, b2), vec![m, h]),
            (uniform(rng, m, b2), vec![m]),
            (vec![1.0; m], vec![m]),
            (vec![0.0; m], vec![m]),
        ];
        let vars = values
            .into_iter()
            .map(|(v, s)| Var::from_tensor(&Tensor::from_vec(v, s, dev)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mlp {
            vars,
            dim_in,
            hidden,
            dim_out,
            eps,
        })
    }

    /// Makes the network start as the projection `p` (`dim_out x dim_in`, row-major; PCA's
    /// components): hidden units `0..m` see `p x`, units `m..2m` see `-p x`, and the second
    /// layer outputs their difference. `gelu(u) - gelu(-u) = u` exactly (GELU's tanh is odd)
    /// and the first layer norm only rescales the row (the `2m` inputs sum to zero), so the
    /// output is `LN(p x)` then L2-normalised: the projection up to the removal of its
    /// mean coordinate. Other hidden units keep their random weights scaled by 1e-3.
    /// Needs `hidden >= 2 * dim_out`.
    pub fn init_from_projection(&self, p: &[f32]) -> Result<()> {
        let (d, h, m) = (self.dim_in, self.hidden, self.dim_out);
        if h < 2 * m || p.len() != m * d {
            candle_core::bail!(
                "projection init needs hidden >= 2 * dim ({h} < {}) and a {m} x {d} projection",
                2 * m
            );
        }
        let dev = self.v(0).device().clone();
        let mut w1 = self.v(0).flatten_all()?.to_vec1::<f32>()?;
        w1[..m * d].copy_from_slice(p);
        for (dst, src) in w1[m * d..2 * m * d].iter_mut().zip(p) {
            *dst = -src;
        }
        // the other hidden units start nearly silent (they would shift the layer norm's
        // mean), but not all equal, so training can still tell them apart
        w1[2 * m * d..].iter_mut().for_each(|w| *w *= 1e-3);
        let mut b1 = self.v(1).to_vec1::<f32>()?;
        b1.fill(0.0);
        let mut w2 = vec![0f32; m * h];
        for i in 0..m {
            w2[i * h + i] = 1.0;
            w2[i * h + m + i] = -1.0;
        }
        self.vars[0].set(&Tensor::from_vec(w1, (h, d), &dev)?)?;
        self.vars[1].set(&Tensor::from_vec(b1, h, &dev)?)?;
        self.vars[4].set(&Tensor::from_vec(w2, (m, h), &dev)?)?;
        self.vars[5].set(&Tensor::zeros(m, candle_core::DType::F32, &dev)?)?;
        Ok(())
    }

    /// Loads the variables from a trained transform (to continue from it, or to compare).
    pub fn from_transform(t: &LearnedTransform, dev: &Device) -> Result<Mlp> {
        let vars = t
            .tensors()
            .into_iter()
            .map(|(_, s, v)| Var::from_tensor(&Tensor::from_slice(v, s, dev)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mlp {
            vars,
            dim_in: t.dim_in(),
            hidden: t.hidden(),
            dim_out: t.dim_out(),
            eps: t.eps() as f64,
        })
    }

    fn v(&self, i: usize) -> &Tensor {
        self.vars[i].as_tensor()
    }

    /// The L2-normalised output for a batch `x` (n x d). With `train` set, adds Gaussian
    /// input noise of that standard deviation and applies dropout with that probability,
    /// both drawn from the given generator.
    pub fn forward(
        &self,
        x: &Tensor,
        train: Option<(&mut ChaCha8Rng, f32, f32)>,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let dev = x.device();
        let (x, drop) = match train {
            Some((rng, noise, dropout)) => {
                let x = if noise > 0.0 {
                    let z: Vec<f32> = (0..n * self.dim_in)
                        .map(|_| {
                            let z: f32 = StandardNormal.sample(rng);
                            noise * z
                        })
                        .collect();
                    (x + Tensor::from_vec(z, (n, self.dim_in), dev)?)?
                } else {
                    x.clone()
                };
                let mask = if dropout > 0.0 {
                    let keep = 1.0 / (1.0 - dropout);
                    let m: Vec<f32> = (0..n * self.hidden)
                        .map(|_| {
                            if rng.random::<f32>() < dropout {
                                0.0
                            } else {
                                keep
                            }
                        })
                        .collect();
                    Some(Tensor::from_vec(m, (n, self.hidden), dev)?)
                } else {
                    None
                };
                (x, mask)
            }
            None => (x.clone(), None),
        };
        // the input is data: no gradient for it
        let h = ops::linear(&x, self.v(0), self.v(1), false)?;
        let h = ops::gelu(&ops::layer_norm(&h, self.v(2), self.v(3), self.eps)?)?;
        let h = match drop {
            Some(m) => (h * m)?,
            None => h,
        };
        let z = ops::linear(&h, self.v(4), self.v(5), true)?;
        let z = ops::layer_norm(&z, self.v(6), self.v(7), self.eps)?;
        ops::l2_normalize(&z)
    }

    /// The current weights as the core crate's inference transform.
    pub fn export(&self) -> Result<LearnedTransform> {
        let mut t: [Vec<f32>; 8] = Default::default();
        for (i, v) in self.vars.iter().enumerate() {
            t[i] = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        }
        LearnedTransform::from_tensors(self.dim_in, self.hidden, self.dim_out, self.eps as f32, t)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Copies of the current weights (to restore the best epoch).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.vars.iter().map(|v| v.as_tensor().copy()).collect()
    }

    /// Restores weights taken by [`Mlp::snapshot`].
    pub fn restore(&self, snap: &[Tensor]) -> Result<()> {
        for (v, t) in self.vars.iter().zip(snap) {
            v.set(t)?;
        }
        Ok(())
    }
}

/// The quantized view of unit-norm outputs `z` used on both sides of a `sign` run: forward
/// `sign(z) / sqrt(m)`, backward the identity (straight-through estimator).
pub fn fake_quantize(z: &Tensor) -> Result<Tensor> {
    let m = z.dim(D::Minus1)? as f64;
    let hard = (z.sign()? / m.sqrt())?;
    z + (hard - z)?.detach()
}

/// The document side of `asign` and `int8` codes: forward the vector the index will score
/// the float query against, backward the identity (straight-through). `centroid` is the
/// outputs' mean (asign's thresholds).
pub fn fake_document(z: &Tensor, q: Qat, centroid: &[f32]) -> Result<Tensor> {
    let (n, m) = z.dims2()?;
    let zv: Vec<f32> = z.flatten_all()?.to_vec1()?;
    let mut h = vec![0f32; n * m];
    match q {
        Qat::Asign => {
            for (hr, zr) in h.chunks_exact_mut(m).zip(zv.chunks_exact(m)) {
                for ((o, &v), &c) in hr.iter_mut().zip(zr).zip(centroid) {
                    *o = if v > c { 1.0 } else { -1.0 } / (m as f32).sqrt();
                }
            }
        }
        Qat::Int8 => {
            let mut a = vec![1e-12f32; m];
            for zr in zv.chunks_exact(m) {
                for (a, v) in a.iter_mut().zip(zr) {
                    *a = a.max(v.abs());
                }
            }
            for (hr, zr) in h.chunks_exact_mut(m).zip(zv.chunks_exact(m)) {
                for ((o, &v), &a) in hr.iter_mut().zip(zr).zip(&a) {
                    *o = (v / a * 127.0).round() / 127.0 * a;
                }
            }
        }
        Qat::Sign | Qat::Pq { .. } | Qat::Rabitq { .. } => {
            unreachable!(
                "invariant: sign is symmetric; pq and rabitq documents come from their quantizers"
            )
        }
    }
    let hard = Tensor::from_vec(h, (n, m), z.device())?;
    z + (hard - z)?.detach()
}

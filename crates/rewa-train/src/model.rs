//! The MLP as candle tensors: seeded initialisation, the training forward pass (dropout,
//! input noise, quantization-aware outputs), and export to the core crate's
//! [`LearnedTransform`], which runs the same arithmetic without candle.

use crate::ops;
use candle_core::{Device, Result, Tensor, Var, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rewa::encode::{LearnedTransform, Transform};

/// Which quantizer the outputs are trained to survive (straight-through estimator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qat {
    /// One bit per dimension: forward uses `sign(z) / sqrt(m)`, backward passes the gradient
    /// through unchanged.
    Sign,
    /// One byte per dimension: forward rounds to 255 levels over the batch's range.
    Int8,
}

impl std::str::FromStr for Qat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sign" => Ok(Qat::Sign),
            "int8" => Ok(Qat::Int8),
            _ => Err(format!("unknown quantizer {s:?} (sign or int8)")),
        }
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

/// The quantized view of unit-norm outputs `z` used in training: forward is the quantized
/// value, backward the identity (straight-through estimator).
pub fn fake_quantize(z: &Tensor, q: Qat) -> Result<Tensor> {
    let m = z.dim(D::Minus1)? as f64;
    let hard = match q {
        Qat::Sign => (z.sign()? / m.sqrt())?,
        Qat::Int8 => {
            let a = z.abs()?.max_keepdim(0)?.detach();
            let a = (a + 1e-12)?;
            let scaled = z.broadcast_div(&a)?.affine(127.0, 0.0)?.round()?;
            let back = scaled.affine(1.0 / 127.0, 0.0)?.broadcast_mul(&a)?;
            ops::l2_normalize(&back)?
        }
    };
    z + (hard - z)?.detach()
}

//! AdamW with global-norm gradient clipping, fused into one parallel pass per variable.
//!
//! Same update as candle-nn's `AdamW` (decoupled weight decay, bias-corrected moments; the
//! test below checks it step for step), which builds a dozen tensors per variable per step:
//! at this model's size that was a tenth of a training step.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

/// The optimiser state: first and second moments of every variable.
pub struct AdamW {
    /// Learning rate of the next step.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    t: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Moments at zero for `vars`; betas 0.9 and 0.999, epsilon 1e-8 (candle-nn's and
    /// PyTorch's defaults).
    pub fn new(vars: &[Var], lr: f64, weight_decay: f64) -> AdamW {
        let zeros = || vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        AdamW {
            lr,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: zeros(),
            v: zeros(),
        }
    }

    /// Scales the gradients down to global L2 norm `clip` when they exceed it, then updates
    /// `vars` (the ones given to [`AdamW::new`], in that order). Returns the norm before
    /// clipping.
    pub fn step(&mut self, vars: &[Var], grads: &GradStore, clip: f64) -> Result<f64> {
        let gs: Vec<Option<Vec<f32>>> = vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .map(|g| g.flatten_all()?.to_vec1::<f32>())
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let norm = gs
            .iter()
            .flatten()
            .map(|g| g.par_iter().map(|&x| x as f64 * x as f64).sum::<f64>())
            .sum::<f64>()
            .sqrt();
        let clip_scale = if norm > clip {
            (clip / (norm + 1e-6)) as f32
        } else {
            1.0
        };
        self.t += 1;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let scale_m = (1.0 / (1.0 - self.beta1.powi(self.t))) as f32;
        let scale_v = (1.0 / (1.0 - self.beta2.powi(self.t))) as f32;
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        let (lr, eps) = (self.lr as f32, self.eps as f32);
        for (i, (var, g)) in vars.iter().zip(gs).enumerate() {
            let Some(g) = g else { continue };
            let mut theta = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            theta
                .par_iter_mut()
                .zip(self.m[i].par_iter_mut())
                .zip(self.v[i].par_iter_mut())
                .zip(g.par_iter())
                .for_each(|(((th, m), v), &g)| {
                    let g = g * clip_scale;
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    let (mh, vh) = (*m * scale_m, *v * scale_v);
                    *th = *th * decay - mh / (vh.sqrt() + eps) * lr;
                });
            var.set(&Tensor::from_vec(theta, var.shape(), var.device())?)?;
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{Optimizer, ParamsAdamW};

    #[test]
    fn matches_candle_nn_adamw() {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..60).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = Var::from_vec(init.clone(), (6, 10), &dev).unwrap();
        let b = Var::from_vec(init, (6, 10), &dev).unwrap();
        let mut ours = AdamW::new(std::slice::from_ref(&a), 0.01, 0.05);
        let mut theirs = candle_nn::AdamW::new(
            vec![b.clone()],
            ParamsAdamW {
                lr: 0.01,
                weight_decay: 0.05,
                ..Default::default()
            },
        )
        .unwrap();
        let target = Tensor::arange(0f32, 60., &dev)
            .unwrap()
            .reshape((6, 10))
            .unwrap();
        for _ in 0..5 {
            let ga = (a.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let gb = (b.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            // a clip far above the norm: no clipping, same update as candle-nn
            ours.step(std::slice::from_ref(&a), &ga.backward().unwrap(), 1e9)
                .unwrap();
            theirs.step(&gb.backward().unwrap()).unwrap();
        }
        let (x, y) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(
            x.iter().zip(&y).all(|(x, y)| (x - y).abs() < 1e-6),
            "{x:?} vs {y:?}"
        );
    }

    #[test]
    fn clips_to_the_global_norm() {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![0f32; 4], 4, &dev).unwrap();
        let mut opt = AdamW::new(std::slice::from_ref(&a), 0.1, 0.0);
        // loss 3 * sum(a): gradient 3 everywhere, norm 6
        let loss = (a.as_tensor().sum_all().unwrap() * 3.0).unwrap();
        let norm = opt
            .step(std::slice::from_ref(&a), &loss.backward().unwrap(), 1.0)
            .unwrap();
        assert!((norm - 6.0).abs() < 1e-9);
        // Adam's first step moves every weight by lr (sign of the gradient), clipped or not
        let x = a.as_tensor().to_vec1::<f32>().unwrap();
        assert!(x.iter().all(|v| (v + 0.1).abs() < 1e-4), "{x:?}");
        // the second moment saw the clipped gradient (0.5), not 3
        assert!((opt.v[0][0] - 0.001 * 0.25).abs() < 1e-7, "{}", opt.v[0][0]);
    }
}

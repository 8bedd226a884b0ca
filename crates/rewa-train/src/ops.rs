//! Fused CPU kernels for the training graph, as candle custom ops with hand-written backward
//! passes.
//!
//! Why: candle builds layer norm, GELU's derivative and log-softmax from many small
//! element-wise tensors, most of them single-threaded, and its matmul backward also computes
//! the gradient of the (constant) input batch. At the encoder's sizes that overhead was two
//! thirds of a training step. Each op here is one parallel pass over rows for its forward and
//! one for its backward; the forwards call the core crate's own row functions, so training
//! and inference run the same arithmetic. Every op is tested against candle's autodiff of the
//! composed version (`tests` below).

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::sync::Arc;

/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 32;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused op: input is not contiguous"),
    }
}

fn rows_cols(l: &Layout) -> Result<(usize, usize)> {
    match l.dims() {
        [n, c] => Ok((*n, *c)),
        d => bail!("fused op: expected a matrix, got shape {d:?}"),
    }
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

fn tensor(v: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(v, like.shape(), like.device())
}

/// `c (m x n) = a (m x k) * b (k x n)` with any strides for `a` and `b`, `c` row-major;
/// rows of `c` are split between rayon threads, each a single-threaded `matrixmultiply` call.
#[allow(clippy::too_many_arguments)]
pub fn par_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
) {
    assert!(c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    assert!(a.len() > (m - 1) * rsa + (k - 1) * csa && b.len() > (k - 1) * rsb + (n - 1) * csb);
    let threads = rayon::current_num_threads().max(1);
    let chunk = m.div_ceil(threads).max(16);
    c[..m * n]
        .par_chunks_mut(chunk * n)
        .enumerate()
        .for_each(|(i, out)| {
            let r0 = i * chunk;
            let rows = out.len() / n;
            // SAFETY: the asserts above keep every index these strides reach inside `a`, `b`
            // and this chunk of `c`.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    k,
                    n,
                    1.0,
                    a.as_ptr().add(r0 * rsa),
                    rsa as isize,
                    csa as isize,
                    b.as_ptr(),
                    rsb as isize,
                    csb as isize,
                    0.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        });
}

/// `x x^T` (`n x n`, row-major) of a row-major `n x d` matrix, computing only the blocks on
/// and above the diagonal of a 4 x 4 block grid (10 products of 16) and mirroring the rest.
pub fn par_gram(x: &[f32], n: usize, d: usize) -> Vec<f32> {
    const B: usize = 4;
    let bs = n.div_ceil(B).max(1);
    let span = |i: usize| (i * bs, ((i + 1) * bs).min(n));
    let pairs: Vec<(usize, usize)> = (0..B)
        .flat_map(|i| (i..B).map(move |j| (i, j)))
        .filter(|&(i, j)| span(i).0 < n && span(j).0 < n)
        .collect();
    let blocks: Vec<((usize, usize), Vec<f32>)> = pairs
        .into_par_iter()
        .map(|(i, j)| {
            let ((r0, r1), (c0, c1)) = (span(i), span(j));
            let mut out = vec![0f32; (r1 - r0) * (c1 - c0)];
            rewa::linalg::gemm_abt(
                &x[r0 * d..r1 * d],
                &x[c0 * d..c1 * d],
                r1 - r0,
                d,
                c1 - c0,
                &mut out,
            );
            ((i, j), out)
        })
        .collect();
    let mut g = vec![0f32; n * n];
    for ((i, j), out) in blocks {
        let ((r0, r1), (c0, c1)) = (span(i), span(j));
        let w = c1 - c0;
        for (r, row) in (r0..r1).zip(out.chunks_exact(w)) {
            g[r * n + c0..r * n + c1].copy_from_slice(row);
            if i != j {
                for (c, &v) in (c0..c1).zip(row) {
                    g[c * n + r] = v;
                }
            }
        }
    }
    g
}

/// Column sums of a row-major `n x c` matrix.
fn column_sums(g: &[f32], c: usize) -> Vec<f32> {
    g.par_chunks(ROWS_PER_TASK * c)
        .map(|block| {
            let mut s = vec![0f32; c];
            for row in block.chunks_exact(c) {
                s.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            s
        })
        .reduce(
            || vec![0f32; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// `x w^T + b` (x: n x k, w: o x k, b: o). `input_grad: false` skips the input's gradient,
/// for the first layer, whose input is data.
struct Linear {
    input_grad: bool,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "rewa-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = rows_cols(xl)?;
        let (o, k2) = rows_cols(wl)?;
        if k != k2 || bl.dims() != [o] {
            bail!(
                "linear: x {:?}, w {:?}, b {:?}",
                xl.dims(),
                wl.dims(),
                bl.dims()
            );
        }
        let (x, w, b) = (
            contiguous(xs, xl)?,
            contiguous(ws, wl)?,
            contiguous(bs, bl)?,
        );
        let mut y = vec![0f32; n * o];
        par_gemm(n, k, o, x, (k, 1), w, (1, k), &mut y);
        y.par_chunks_mut(o)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = x.dims2()?;
        let (o, _) = w.dims2()?;
        let (xv, gv) = (host(x)?, host(g)?);
        // dW = g^T x  (o x n)(n x k)
        let mut dw = vec![0f32; o * k];
        par_gemm(o, n, k, &gv, (1, o), &xv, (k, 1), &mut dw);
        let db = column_sums(&gv, o);
        let dx = if self.input_grad {
            let wv = host(w)?;
            // dx = g W  (n x o)(o x k)
            let mut dx = vec![0f32; n * k];
            par_gemm(n, o, k, &gv, (o, 1), &wv, (k, 1), &mut dx);
            Some(tensor(dx, x)?)
        } else {
            None
        };
        Ok((dx, Some(tensor(dw, w)?), Some(tensor(db, b)?)))
    }
}

/// `x w^T + b`; see [`Linear`].
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, input_grad: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op3(w, b, Linear { input_grad })
}

/// GELU (tanh approximation), [`rewa::encode::gelu`] per element.
struct Gelu;

/// d gelu(x) / dx for the tanh approximation, from its sigmoid form `x * sigmoid(2u(x))`.
#[inline]
fn gelu_grad(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    let s = 1.0 / (1.0 + (-2.0 * rewa::encode::gelu_u(x)).exp());
    s + x * s * (1.0 - s) * 2.0 * C * (1.0 + 3.0 * 0.044715 * x * x)
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "rewa-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let mut y = x.to_vec();
        y.par_chunks_mut(4096)
            .for_each(|c| c.iter_mut().for_each(|v| *v = rewa::encode::gelu(*v)));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (xv, mut gv) = (host(x)?, host(g)?);
        gv.par_chunks_mut(4096)
            .zip(xv.par_chunks(4096))
            .for_each(|(g, x)| g.iter_mut().zip(x).for_each(|(g, &x)| *g *= gelu_grad(x)));
        Ok(Some(tensor(gv, x)?))
    }
}

/// GELU (tanh approximation) with a fused backward pass.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// Layer norm over the last dimension with scale and shift; [`rewa::encode::layer_norm`] per
/// row.
struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "rewa-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c) = rows_cols(xl)?;
        if gl.dims() != [c] || bl.dims() != [c] {
            bail!(
                "layer norm: x {:?}, scale {:?}, shift {:?}",
                xl.dims(),
                gl.dims(),
                bl.dims()
            );
        }
        let (g, b) = (contiguous(gs, gl)?, contiguous(bs, bl)?);
        let mut y = contiguous(xs, xl)?.to_vec();
        y.par_chunks_mut(c)
            .for_each(|row| rewa::encode::layer_norm(row, g, b, self.eps));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c) = x.dims2()?;
        let (xv, gv, gam) = (host(x)?, host(g)?, host(gamma)?);
        let mut dx = vec![0f32; xv.len()];
        let eps = self.eps;
        // per block of rows: dx, and partial sums of dgamma (first c) and dbeta (last c)
        let partial = dx
            .par_chunks_mut(ROWS_PER_TASK * c)
            .zip(
                xv.par_chunks(ROWS_PER_TASK * c)
                    .zip(gv.par_chunks(ROWS_PER_TASK * c)),
            )
            .map(|(dxb, (xb, gb))| {
                let mut acc = vec![0f32; 2 * c];
                let mut xhat = vec![0f32; c];
                for ((dxr, xr), gr) in dxb
                    .chunks_exact_mut(c)
                    .zip(xb.chunks_exact(c))
                    .zip(gb.chunks_exact(c))
                {
                    let cf = c as f32;
                    let mean = xr.iter().sum::<f32>() / cf;
                    let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cf;
                    let inv = 1.0 / (var + eps).sqrt();
                    let (mut s1, mut s2) = (0f32, 0f32);
                    for j in 0..c {
                        xhat[j] = (xr[j] - mean) * inv;
                        let dh = gr[j] * gam[j];
                        s1 += dh;
                        s2 += dh * xhat[j];
                        acc[j] += gr[j] * xhat[j];
                        acc[c + j] += gr[j];
                    }
                    let (m1, m2) = (s1 / cf, s2 / cf);
                    for j in 0..c {
                        dxr[j] = inv * (gr[j] * gam[j] - m1 - xhat[j] * m2);
                    }
                }
                acc
            })
            .reduce(
                || vec![0f32; 2 * c],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let dgamma = partial[..c].to_vec();
        let dbeta = partial[c..].to_vec();
        Ok((
            Some(tensor(dx, x)?),
            Some(tensor(dgamma, gamma)?),
            Some(tensor(dbeta, beta)?),
        ))
    }
}

/// Layer norm over the last dimension of a matrix, with a fused backward pass.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(gamma, beta, LayerNorm { eps: eps as f32 })
}

/// Rows scaled to unit L2 norm ([`rewa::normalize`] per row).
struct L2Normalize;

impl CustomOp1 for L2Normalize {
    fn name(&self) -> &'static str {
        "rewa-l2-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c) = rows_cols(l)?;
        let mut y = contiguous(s, l)?.to_vec();
        y.par_chunks_mut(c).for_each(rewa::normalize);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (_, c) = x.dims2()?;
        let (xv, yv, mut gv) = (host(x)?, host(res)?, host(g)?);
        gv.par_chunks_mut(c)
            .zip(xv.par_chunks(c).zip(yv.par_chunks(c)))
            .for_each(|(gr, (xr, yr))| {
                let norm = rewa::distance::dot(xr, xr).sqrt();
                if norm == 0.0 {
                    gr.fill(0.0);
                    return;
                }
                let yg = rewa::distance::dot(yr, gr);
                gr.iter_mut()
                    .zip(yr)
                    .for_each(|(g, y)| *g = (*g - y * yg) / norm);
            });
        Ok(Some(tensor(gv, x)?))
    }
}

/// Rows scaled to unit L2 norm, with a fused backward pass.
pub fn l2_normalize(z: &Tensor) -> Result<Tensor> {
    z.contiguous()?.apply_op1(L2Normalize)
}

/// The contrastive loss of a batch of unit-norm outputs `z` (n x m): logits are the scaled
/// similarities `exp(log_scale) * z z^T`, and the loss is their soft cross-entropy against
/// target rows with the diagonal left out,
/// `-(1/n) sum_i sum_{j != i} t_ij log softmax_{j != i}(logits_i)_j`.
struct SimilarityCe {
    targets: Arc<Vec<f32>>,
    /// The forward pass's logits and per-row log-sum-exps, which the backward pass of the
    /// same op (same `z`) reuses instead of recomputing the Gram matrix.
    cache: LogitsCache,
}

/// Per row: the log-sum-exp over the off-diagonal entries.
fn off_diagonal_lse(row: &[f32], i: usize) -> f32 {
    let mx = row
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
    let s: f32 = row
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, &v)| (v - mx).exp())
        .sum();
    mx + s.ln()
}

/// `-sum_i sum_{j != i} t_ij (logits_ij - lse_i)`, the loss times `n`.
fn cross_entropy(logits: &[f32], targets: &[f32], lses: &[f32], n: usize) -> f64 {
    logits
        .par_chunks(n)
        .zip(targets.par_chunks(n))
        .zip(lses.par_iter())
        .enumerate()
        .map(|(i, ((row, t), &lse))| {
            (0..n)
                .filter(|&j| j != i && t[j] != 0.0)
                .map(|j| -(t[j] * (row[j] - lse)) as f64)
                .sum::<f64>()
        })
        .sum()
}

/// Logits and row sums kept for the backward pass of a forward that computed them.
type LogitsCache = std::sync::Mutex<Option<(Vec<f32>, Vec<f32>)>>;

/// The mean loss as the op's scalar output; `logits` and `lses` kept in `cache` for `bwd`.
fn loss_output(
    cache: &LogitsCache,
    targets: &[f32],
    logits: Vec<f32>,
    lses: Vec<f32>,
    n: usize,
) -> Result<(CpuStorage, Shape)> {
    let total = cross_entropy(&logits, targets, &lses, n);
    *cache.lock().expect("cache lock") = Some((logits, lses));
    Ok((
        CpuStorage::F32(vec![(total / n as f64) as f32]),
        Shape::from(()),
    ))
}

/// Turns `logits` into `d loss / d logits` in place (`scale` = upstream gradient / n, the
/// diagonal zero) and returns `d loss / d log_scale = sum(dlogits * logits)`.
fn logits_gradient(logits: &mut [f32], targets: &[f32], lses: &[f32], n: usize, scale: f32) -> f64 {
    logits
        .par_chunks_mut(n)
        .zip(targets.par_chunks(n))
        .zip(lses.par_iter())
        .enumerate()
        .map(|(i, ((row, t), &lse))| {
            let tsum: f32 = (0..n).filter(|&j| j != i).map(|j| t[j]).sum();
            let mut acc = 0f64;
            for j in 0..n {
                let l = row[j];
                row[j] = if j == i {
                    0.0
                } else {
                    scale * (tsum * (l - lse).exp() - t[j])
                };
                acc += (row[j] * l) as f64;
            }
            acc
        })
        .sum()
}

/// `exp(log_scale) * z z^T`, row-major `n x n`.
fn scaled_gram(z: &[f32], n: usize, m: usize, log_scale: f32) -> Vec<f32> {
    let mut g = par_gram(z, n, m);
    let s = log_scale.exp();
    g.par_chunks_mut(n)
        .for_each(|r| r.iter_mut().for_each(|v| *v *= s));
    g
}

/// The scaled Gram matrix and each row's off-diagonal log-sum-exp.
fn logits_and_lses(z: &[f32], n: usize, m: usize, log_scale: f32) -> (Vec<f32>, Vec<f32>) {
    with_lses(scaled_gram(z, n, m, log_scale), n)
}

/// `logits` and each row's off-diagonal log-sum-exp.
fn with_lses(logits: Vec<f32>, n: usize) -> (Vec<f32>, Vec<f32>) {
    let lses = logits
        .par_chunks(n)
        .enumerate()
        .map(|(i, row)| off_diagonal_lse(row, i))
        .collect();
    (logits, lses)
}

impl CustomOp2 for SimilarityCe {
    fn name(&self) -> &'static str {
        "rewa-similarity-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, m) = rows_cols(zl)?;
        if self.targets.len() != n * n || sl.shape().elem_count() != 1 {
            bail!(
                "similarity cross-entropy: z {:?}, scale {:?}, {} targets",
                zl.dims(),
                sl.dims(),
                self.targets.len()
            );
        }
        let (logits, lses) = logits_and_lses(contiguous(zs, zl)?, n, m, contiguous(ss, sl)?[0]);
        loss_output(&self.cache, &self.targets, logits, lses, n)
    }

    fn bwd(
        &self,
        z: &Tensor,
        log_scale: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, m) = z.dims2()?;
        let zv = host(z)?;
        let ls = host(log_scale)?[0];
        let scale = g.to_scalar::<f32>()? / n as f32;
        let cached = self.cache.lock().expect("cache lock").take();
        let (mut logits, lses) = match cached {
            Some((l, s)) if l.len() == n * n => (l, s),
            _ => logits_and_lses(&zv, n, m, ls),
        };
        // d loss / d logits, in place; and d loss / d log_scale = sum(dlogits * logits)
        let dls = logits_gradient(&mut logits, &self.targets, &lses, n, scale);
        // logits = s z z^T: dz = s (D + D^T) z
        let s = ls.exp();
        let sym: Vec<f32> = (0..n * n)
            .into_par_iter()
            .map(|ij| s * (logits[ij] + logits[ij % n * n + ij / n]))
            .collect();
        let mut dz = vec![0f32; n * m];
        par_gemm(n, n, m, &sym, (n, 1), &zv, (m, 1), &mut dz);
        Ok((
            Some(tensor(dz, z)?),
            Some(Tensor::new(&[dls as f32], log_scale.device())?.reshape(log_scale.shape())?),
        ))
    }
}

/// The contrastive loss of unit-norm outputs `z` (n x m) at temperature
/// `exp(-log_scale)` against `targets` (n x n, row-major), the diagonal excluded; a scalar.
pub fn similarity_cross_entropy(
    z: &Tensor,
    log_scale: &Tensor,
    targets: Vec<f32>,
) -> Result<Tensor> {
    z.contiguous()?.apply_op2(
        log_scale,
        SimilarityCe {
            targets: Arc::new(targets),
            cache: std::sync::Mutex::new(None),
        },
    )
}

/// The asymmetric contrastive loss: logits `exp(log_scale) * z h^T` (the float outputs `z`
/// against the documents as the index scores them, `h`), otherwise as
/// [`similarity_cross_entropy`]. Gradients: `dz = s D h`, `dh = s D^T z`.
struct AsymSimilarityCe {
    targets: Arc<Vec<f32>>,
    cache: LogitsCache,
}

/// `exp(log_scale) * z h^T` and each row's off-diagonal log-sum-exp.
fn asym_logits(z: &[f32], h: &[f32], n: usize, m: usize, log_scale: f32) -> (Vec<f32>, Vec<f32>) {
    let mut logits = vec![0f32; n * n];
    par_gemm(n, m, n, z, (m, 1), h, (1, m), &mut logits);
    let s = log_scale.exp();
    logits.par_iter_mut().for_each(|v| *v *= s);
    with_lses(logits, n)
}

impl CustomOp3 for AsymSimilarityCe {
    fn name(&self) -> &'static str {
        "rewa-asymmetric-similarity-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        hs: &CpuStorage,
        hl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, m) = rows_cols(zl)?;
        if rows_cols(hl)? != (n, m) || self.targets.len() != n * n || sl.shape().elem_count() != 1 {
            bail!(
                "asymmetric similarity cross-entropy: z {:?}, h {:?}, scale {:?}, {} targets",
                zl.dims(),
                hl.dims(),
                sl.dims(),
                self.targets.len()
            );
        }
        let (logits, lses) = asym_logits(
            contiguous(zs, zl)?,
            contiguous(hs, hl)?,
            n,
            m,
            contiguous(ss, sl)?[0],
        );
        loss_output(&self.cache, &self.targets, logits, lses, n)
    }

    fn bwd(
        &self,
        z: &Tensor,
        h: &Tensor,
        log_scale: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, m) = z.dims2()?;
        let (zv, hv) = (host(z)?, host(h)?);
        let ls = host(log_scale)?[0];
        let scale = g.to_scalar::<f32>()? / n as f32;
        let cached = self.cache.lock().expect("cache lock").take();
        let (mut logits, lses) = match cached {
            Some((l, s)) if l.len() == n * n => (l, s),
            _ => asym_logits(&zv, &hv, n, m, ls),
        };
        let dls = logits_gradient(&mut logits, &self.targets, &lses, n, scale);
        // logits = s z h^T: dz = s D h, dh = s D^T z
        let s = ls.exp();
        logits.par_iter_mut().for_each(|v| *v *= s);
        let mut dz = vec![0f32; n * m];
        par_gemm(n, n, m, &logits, (n, 1), &hv, (m, 1), &mut dz);
        let mut dh = vec![0f32; n * m];
        par_gemm(n, n, m, &logits, (1, n), &zv, (m, 1), &mut dh);
        Ok((
            Some(tensor(dz, z)?),
            Some(tensor(dh, h)?),
            Some(Tensor::new(&[dls as f32], log_scale.device())?.reshape(log_scale.shape())?),
        ))
    }
}

/// The contrastive loss of the float outputs `z` (n x m) against the documents `h` (n x m,
/// quantized as the index scores them) at temperature `exp(-log_scale)` against `targets`
/// (n x n, row-major), the diagonal excluded; a scalar.
pub fn asymmetric_cross_entropy(
    z: &Tensor,
    h: &Tensor,
    log_scale: &Tensor,
    targets: Vec<f32>,
) -> Result<Tensor> {
    z.contiguous()?.apply_op3(
        &h.contiguous()?,
        log_scale,
        AsymSimilarityCe {
            targets: Arc::new(targets),
            cache: std::sync::Mutex::new(None),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn rand(shape: (usize, usize), seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..shape.0 * shape.1)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn var(shape: (usize, usize), seed: u64) -> Var {
        Var::from_vec(rand(shape, seed), shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let (a, b) = (host(a).unwrap(), host(b).unwrap());
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0f32, f32::max);
        assert!(worst < tol, "max relative difference {worst}");
    }

    /// A fixed random linear functional of `y`, so gradients are not all alike.
    fn probe(y: &Tensor) -> Tensor {
        let w = Tensor::from_vec(rand(y.dims2().unwrap(), 99), y.shape(), y.device()).unwrap();
        (y * w).unwrap().sum_all().unwrap()
    }

    /// Forward values and gradients of the fused and composed versions of one function.
    fn same(fused: impl Fn(&[Var]) -> Tensor, composed: impl Fn(&[Var]) -> Tensor, vars: &[Var]) {
        let (a, b) = (fused(vars), composed(vars));
        close(&a, &b, 1e-5);
        let (ga, gb) = (probe(&a).backward().unwrap(), probe(&b).backward().unwrap());
        for v in vars {
            match (ga.get(v.as_tensor()), gb.get(v.as_tensor())) {
                (Some(x), Some(y)) => close(x, y, 1e-4),
                (None, None) => {}
                (x, y) => panic!(
                    "gradient present: fused {}, composed {}",
                    x.is_some(),
                    y.is_some()
                ),
            }
        }
    }

    #[test]
    fn par_gemm_agrees_with_loops_for_every_layout() {
        let (m, k, n) = (37, 19, 23);
        let a = rand((m, k), 1);
        let b = rand((k, n), 2);
        let want: Vec<f32> = (0..m * n)
            .map(|ij| (0..k).map(|t| a[ij / n * k + t] * b[t * n + ij % n]).sum())
            .collect();
        let mut c = vec![0f32; m * n];
        par_gemm(m, k, n, &a, (k, 1), &b, (n, 1), &mut c);
        assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4));
        // the same product from transposed copies
        let at: Vec<f32> = (0..k * m).map(|ji| a[ji % m * k + ji / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|ji| b[ji % k * n + ji / k]).collect();
        let mut c2 = vec![0f32; m * n];
        par_gemm(m, k, n, &at, (1, m), &bt, (1, k), &mut c2);
        assert!(c2.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4));
    }

    #[test]
    fn par_gram_agrees_with_loops() {
        for (n, d) in [(1, 3), (5, 2), (37, 19), (64, 8)] {
            let x = rand((n, d), n as u64);
            let g = par_gram(&x, n, d);
            for i in 0..n {
                for j in 0..n {
                    let want: f32 = (0..d).map(|t| x[i * d + t] * x[j * d + t]).sum();
                    assert!((g[i * n + j] - want).abs() < 1e-4, "n {n} [{i},{j}]");
                }
            }
        }
    }

    #[test]
    fn linear_matches_candle() {
        let vars = [
            var((40, 24), 1),
            var((12, 24), 2),
            Var::from_vec(rand((1, 12), 3), 12, &Device::Cpu).unwrap(),
        ];
        let composed = |v: &[Var]| {
            v[0].as_tensor()
                .matmul(&v[1].as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(v[2].as_tensor())
                .unwrap()
        };
        same(
            |v| linear(v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor(), true).unwrap(),
            composed,
            &vars,
        );
        // without the input's gradient, the weights' gradients are unchanged
        let y = linear(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            false,
        )
        .unwrap();
        let g = probe(&y).backward().unwrap();
        assert!(g.get(vars[0].as_tensor()).is_none());
        let want = probe(&composed(&vars)).backward().unwrap();
        close(
            g.get(vars[1].as_tensor()).unwrap(),
            want.get(vars[1].as_tensor()).unwrap(),
            1e-4,
        );
    }

    #[test]
    fn gelu_matches_candle() {
        let vars = [Var::from_vec(
            rand((50, 70), 4).iter().map(|v| v * 4.0).collect(),
            (50, 70),
            &Device::Cpu,
        )
        .unwrap()];
        same(
            |v| gelu(v[0].as_tensor()).unwrap(),
            |v| v[0].as_tensor().gelu().unwrap(),
            &vars,
        );
    }

    #[test]
    fn layer_norm_matches_composed() {
        let dev = Device::Cpu;
        let vars = [
            var((33, 40), 5),
            Var::from_vec(rand((1, 40), 6).iter().map(|v| 1.0 + v).collect(), 40, &dev).unwrap(),
            Var::from_vec(rand((1, 40), 7), 40, &dev).unwrap(),
        ];
        let composed = |v: &[Var]| {
            let x = v[0].as_tensor();
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let xc = x.broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let xn = xc
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap();
            xn.broadcast_mul(v[1].as_tensor())
                .unwrap()
                .broadcast_add(v[2].as_tensor())
                .unwrap()
        };
        same(
            |v| layer_norm(v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor(), 1e-5).unwrap(),
            composed,
            &vars,
        );
    }

    #[test]
    fn l2_normalize_matches_composed() {
        let vars = [var((20, 16), 8)];
        let composed = |v: &[Var]| {
            let z = v[0].as_tensor();
            z.broadcast_div(
                &z.sqr()
                    .unwrap()
                    .sum_keepdim(D::Minus1)
                    .unwrap()
                    .sqrt()
                    .unwrap(),
            )
            .unwrap()
        };
        same(|v| l2_normalize(v[0].as_tensor()).unwrap(), composed, &vars);
    }

    #[test]
    fn similarity_cross_entropy_matches_masked_log_softmax() {
        let (n, m) = (24, 10);
        let dev = Device::Cpu;
        let mut t = rand((n, n), 9)
            .iter()
            .map(|v| v.max(0.0))
            .collect::<Vec<f32>>();
        for i in 0..n {
            t[i * n + i] = 0.0;
        }
        t[3 * n..4 * n].fill(0.0); // a row without positives
        let zv: Vec<f32> = rand((n, m), 10);
        let vars = [
            Var::from_vec(zv, (n, m), &dev).unwrap(),
            Var::from_vec(vec![1.7f32], 1, &dev).unwrap(),
        ];
        let composed = |v: &[Var]| {
            let z = v[0].as_tensor();
            composed_cross_entropy(z, z, v[1].as_tensor(), &t)
        };
        let fused = |v: &[Var]| {
            similarity_cross_entropy(v[0].as_tensor(), v[1].as_tensor(), t.clone()).unwrap()
        };
        same_loss(fused, composed, &vars);
    }

    /// The masked log-softmax cross-entropy of logits `exp(log_scale) z h^T` against `t`,
    /// composed from candle's ops (the reference the fused losses must equal).
    fn composed_cross_entropy(z: &Tensor, h: &Tensor, log_scale: &Tensor, t: &[f32]) -> Tensor {
        let n = z.dims2().unwrap().0;
        let dev = z.device();
        let tt = Tensor::from_slice(t, (n, n), dev).unwrap();
        let mask: Vec<f32> = (0..n * n)
            .map(|ij| if ij / n == ij % n { -1e4 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), dev).unwrap();
        let logits = z
            .matmul(&h.t().unwrap())
            .unwrap()
            .broadcast_mul(&log_scale.exp().unwrap())
            .unwrap()
            .add(&mask)
            .unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        (lp.mul(&tt).unwrap().sum_all().unwrap().neg().unwrap() / n as f64).unwrap()
    }

    /// The same loss and the same gradients for every var.
    fn same_loss(
        fused: impl Fn(&[Var]) -> Tensor,
        composed: impl Fn(&[Var]) -> Tensor,
        vars: &[Var],
    ) {
        let (a, b) = (fused(vars), composed(vars));
        close(&a, &b, 1e-5);
        let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
        for v in vars {
            close(
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
                1e-4,
            );
        }
    }

    #[test]
    fn asymmetric_cross_entropy_matches_masked_log_softmax() {
        let (n, m) = (20, 9);
        let dev = Device::Cpu;
        let mut t = rand((n, n), 19)
            .iter()
            .map(|v| v.max(0.0))
            .collect::<Vec<f32>>();
        for i in 0..n {
            t[i * n + i] = 0.0;
        }
        let vars = [
            Var::from_vec(rand((n, m), 20), (n, m), &dev).unwrap(),
            Var::from_vec(rand((n, m), 21), (n, m), &dev).unwrap(),
            Var::from_vec(vec![1.3f32], 1, &dev).unwrap(),
        ];
        let composed = |v: &[Var]| {
            composed_cross_entropy(v[0].as_tensor(), v[1].as_tensor(), v[2].as_tensor(), &t)
        };
        let fused = |v: &[Var]| {
            asymmetric_cross_entropy(
                v[0].as_tensor(),
                v[1].as_tensor(),
                v[2].as_tensor(),
                t.clone(),
            )
            .unwrap()
        };
        same_loss(fused, composed, &vars);
    }
}

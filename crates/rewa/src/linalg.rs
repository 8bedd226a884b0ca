//! Dense matrix products, by `matrixmultiply`.

/// `out (m x n) = alpha * a (m x k) * b^T` where `b` is `n x k`; all row-major, `beta = 0`.
pub fn gemm_abt(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    // SAFETY: the assert above keeps every index the strides describe inside the buffers.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `out (p x q) = a^T * b` where `a` is `n x p` and `b` is `n x q`; all row-major.
pub fn gemm_atb(a: &[f32], b: &[f32], n: usize, p: usize, q: usize, out: &mut [f32]) {
    assert!(a.len() >= n * p && b.len() >= n * q && out.len() >= p * q);
    if p == 0 || q == 0 {
        return;
    }
    if n == 0 {
        out[..p * q].fill(0.0);
        return;
    }
    // SAFETY: the assert above keeps every index the strides describe inside the buffers.
    unsafe {
        matrixmultiply::sgemm(
            p,
            n,
            q,
            1.0,
            a.as_ptr(),
            1,
            p as isize,
            b.as_ptr(),
            q as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            q as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn agrees_with_loops() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0f32; m * n];
        super::gemm_abt(&a, &b, m, k, n, &mut out);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((out[i * n + j] - want).abs() < 1e-5);
            }
        }
        // a^T b with a (m x k), b (m x n): k x n
        let b2: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.23).cos()).collect();
        let mut out2 = vec![0f32; k * n];
        super::gemm_atb(&a, &b2, m, k, n, &mut out2);
        for i in 0..k {
            for j in 0..n {
                let want: f32 = (0..m).map(|t| a[t * k + i] * b2[t * n + j]).sum();
                assert!((out2[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}

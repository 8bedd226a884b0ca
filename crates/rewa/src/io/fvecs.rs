//! TEXMEX `.fvecs` / `.bvecs` / `.ivecs`: each record is a little-endian i32 dimension
//! followed by that many f32 / u8 / i32 values. All records must share one dimension.

use super::fill_from_bytes;
use crate::error::{Error, Result};
use crate::vectors::Vectors;
use std::path::Path;

fn read_records(path: &Path, elem: usize) -> Result<(usize, usize, Vec<u8>)> {
    super::check_readable(path, u64::MAX)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 4 {
        return Err(Error::corrupt(path, "too short: no dimension field"));
    }
    let d = i32::from_le_bytes(bytes[..4].try_into().unwrap());
    if d <= 0 || d > 1 << 20 {
        return Err(Error::corrupt(path, format!("record 0 has dimension {d}")));
    }
    let d = d as usize;
    let rec = 4 + d * elem;
    if bytes.len() % rec != 0 {
        return Err(Error::corrupt(
            path,
            format!(
                "length {} is not a whole number of records of dimension {d} ({rec} bytes); truncated after row {}",
                bytes.len(),
                bytes.len() / rec
            ),
        ));
    }
    let n = bytes.len() / rec;
    let mut payload = Vec::with_capacity(n * d * elem);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let di = i32::from_le_bytes(r[..4].try_into().unwrap());
        if di as usize != d {
            return Err(Error::corrupt(
                path,
                format!("row {i} has dimension {di}, row 0 has {d}"),
            ));
        }
        payload.extend_from_slice(&r[4..]);
    }
    Ok((n, d, payload))
}

/// Reads an `.fvecs` file.
pub fn read_fvecs(path: &Path) -> Result<Vectors> {
    let (n, d, payload) = read_records(path, 4)?;
    let mut v = vec![0f32; n * d];
    fill_from_bytes(&mut v, &payload);
    Vectors::new(d, v)
}

/// Reads a `.bvecs` file (bytes widened to f32).
pub fn read_bvecs(path: &Path) -> Result<Vectors> {
    let (_, d, payload) = read_records(path, 1)?;
    Vectors::new(d, payload.into_iter().map(f32::from).collect())
}

/// Reads an `.ivecs` file as rows of i32 (e.g. ground-truth neighbour ids).
pub fn read_ivecs(path: &Path) -> Result<(usize, Vec<i32>)> {
    let (n, d, payload) = read_records(path, 4)?;
    let mut v = vec![0i32; n * d];
    fill_from_bytes(&mut v, &payload);
    Ok((d, v))
}

/// Writes vectors as `.fvecs`.
pub fn write_fvecs(path: &Path, v: &Vectors) -> Result<()> {
    let mut out = Vec::with_capacity(v.len() * (4 + 4 * v.dim()));
    for r in v.view().rows() {
        out.extend_from_slice(&(v.dim() as i32).to_le_bytes());
        for x in r {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    super::write_atomic(path, &[&out])
}

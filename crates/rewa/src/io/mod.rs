//! Reading and writing vector files: `.npy` (NumPy), `.fvecs`, `.bvecs`, `.ivecs` (TEXMEX).
//!
//! Every reader checks the whole file before returning: a bad header, a truncated payload,
//! NaN or infinity (naming the row), and an empty set are errors carrying the path.

mod fvecs;
mod npy;

pub use fvecs::{read_bvecs, read_fvecs, read_ivecs, write_fvecs};
pub use npy::{read_npy, write_npy_f32, write_npy_i64, write_npy_u8, NpyArray, NpyData};

use crate::error::{Error, Result};
use crate::vectors::Vectors;
use std::path::Path;

/// Reads a set of float vectors from `.npy` (float16/32/64), `.fvecs` or `.bvecs`, chosen by
/// the file's extension. Fails on NaN/inf (naming the row), on zero rows and on any format error.
pub fn read_vectors(path: &Path) -> Result<Vectors> {
    let v = match ext(path).as_str() {
        "npy" => read_npy(path)?.into_vectors(path)?,
        "fvecs" => read_fvecs(path)?,
        "bvecs" => read_bvecs(path)?,
        other => {
            return Err(Error::InvalidInput(format!(
                "{}: unknown vector file extension {other:?} (expected .npy, .fvecs or .bvecs)",
                path.display()
            )))
        }
    };
    if v.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: holds zero vectors",
            path.display()
        )));
    }
    v.view()
        .check_finite()
        .map_err(|e| Error::InvalidInput(format!("{}: {}", path.display(), strip(&e))))?;
    Ok(v)
}

/// Reads integer labels, one per vector: a 1-D integer `.npy`, or a text file with one label
/// per line.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    if ext(path) == "npy" {
        return read_npy(path)?.into_labels(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim().parse::<i64>().map_err(|_| {
                Error::InvalidInput(format!(
                    "{}: line {}: {:?} is not an integer label",
                    path.display(),
                    i + 1,
                    l
                ))
            })
        })
        .collect()
}

fn ext(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn strip(e: &Error) -> String {
    match e {
        Error::InvalidInput(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[&[u8]]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        for b in bytes {
            f.write_all(b)?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Views a slice of plain numbers as bytes (little-endian hosts only; see `lib.rs`).
pub(crate) fn as_bytes<T: bytes::Pod>(v: &[T]) -> &[u8] {
    // SAFETY: `Pod` types have no padding and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Fills `out` from little-endian bytes; `bytes.len()` must equal `out`'s byte size.
pub(crate) fn fill_from_bytes<T: bytes::Pod>(out: &mut [T], bytes: &[u8]) {
    assert_eq!(bytes.len(), std::mem::size_of_val(out));
    // SAFETY: `Pod` types accept any bit pattern; lengths are equal (asserted above).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), bytes.len())
    }
}

pub(crate) mod bytes {
    /// Plain number types whose bytes may be viewed directly.
    ///
    /// # Safety
    /// Implementors have no padding and accept every bit pattern.
    pub unsafe trait Pod: Copy {}
    unsafe impl Pod for f32 {}
    unsafe impl Pod for f64 {}
    unsafe impl Pod for u8 {}
    unsafe impl Pod for i32 {}
    unsafe impl Pod for i64 {}
    unsafe impl Pod for u32 {}
    unsafe impl Pod for u64 {}
    unsafe impl Pod for half::f16 {}
}

/// Little-endian f32 bytes as floats: borrowed when aligned, copied otherwise.
pub(crate) fn f32_cow(bytes: &[u8]) -> std::borrow::Cow<'_, [f32]> {
    // SAFETY: f32 accepts any bit pattern; `align_to` only yields whole, aligned elements.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    if pre.is_empty() && post.is_empty() {
        std::borrow::Cow::Borrowed(mid)
    } else {
        let mut v = vec![0f32; bytes.len() / 4];
        fill_from_bytes(&mut v, bytes);
        std::borrow::Cow::Owned(v)
    }
}

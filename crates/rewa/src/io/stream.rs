//! [`VectorFile`]: a vector file read a range of rows at a time, for inputs larger than memory.
//!
//! The header is checked when the file is opened (an `.npy` header, or the first record's
//! dimension and a length that is a whole number of records), each range when it is read
//! (every record's dimension, NaN and infinity, named by their row in the file). Rows are read
//! with positioned reads (`pread`) into a buffer of the range's size rather than through a
//! memory map: the pages read stay in the page cache, where the kernel reclaims them, and never
//! count as the process's resident memory, so a 30 GB input costs one chunk of memory.

use super::npy::{npy_layout, Dtype};
use crate::error::{Error, Result};
use crate::vectors::Vectors;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How the rows of a [`VectorFile`] are stored.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// A C-order `.npy` payload of `dtype` from byte `offset`.
    Npy { dtype: Dtype, offset: u64 },
    /// `.fvecs` (`elem` 4) or `.bvecs` (`elem` 1): a little-endian i32 dimension per record.
    Vecs { elem: usize },
}

/// A file of float vectors (`.npy` float16/32/64, `.fvecs`, `.bvecs`) read in ranges of rows.
#[derive(Debug)]
pub struct VectorFile {
    path: PathBuf,
    file: File,
    dim: usize,
    rows: usize,
    layout: Layout,
}

impl VectorFile {
    /// Opens `path` (by extension, as [`super::read_vectors`]) and checks its header and
    /// length; the rows are read by [`VectorFile::read`].
    pub fn open(path: &Path) -> Result<VectorFile> {
        super::check_readable(path, u64::MAX)?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let (dim, rows, layout) = match super::ext(path).as_str() {
            "npy" => {
                let (dtype, offset, shape) = npy_layout(&file, path, len)?;
                if !matches!(dtype, Dtype::F16 | Dtype::F32 | Dtype::F64) {
                    return Err(Error::InvalidInput(format!(
                        "{}: vectors must be float16, float32 or float64, not integers",
                        path.display()
                    )));
                }
                let (rows, dim) = match shape[..] {
                    [r, d] => (r, d),
                    [d] => (1, d),
                    _ => {
                        return Err(Error::InvalidInput(format!(
                            "{}: expected a 2-D array of vectors, got shape {shape:?}",
                            path.display()
                        )))
                    }
                };
                (dim, rows, Layout::Npy { dtype, offset })
            }
            e @ ("fvecs" | "bvecs") => {
                let elem = if e == "fvecs" { 4 } else { 1 };
                let mut d = [0u8; 4];
                file.read_exact_at(&mut d, 0)
                    .map_err(|_| Error::corrupt(path, "too short: no dimension field"))?;
                let d = i32::from_le_bytes(d);
                if d <= 0 || d > 1 << 20 {
                    return Err(Error::corrupt(path, format!("record 0 has dimension {d}")));
                }
                let rec = 4 + d as u64 * elem as u64;
                if len % rec != 0 {
                    return Err(Error::corrupt(
                        path,
                        format!(
                            "length {len} is not a whole number of records of dimension {d} ({rec} bytes); truncated after row {}",
                            len / rec
                        ),
                    ));
                }
                (d as usize, (len / rec) as usize, Layout::Vecs { elem })
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "{}: unknown vector file extension {other:?} (expected .npy, .fvecs or .bvecs)",
                    path.display()
                )))
            }
        };
        if rows == 0 || dim == 0 {
            return Err(Error::InvalidInput(format!(
                "{}: holds zero vectors",
                path.display()
            )));
        }
        Ok(VectorFile {
            path: path.to_path_buf(),
            file,
            dim,
            rows,
            layout,
        })
    }

    /// The vectors' dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.rows
    }
    /// `true` if it holds no vector (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn row_bytes(&self) -> u64 {
        match self.layout {
            Layout::Npy { dtype, .. } => (self.dim * dtype.size()) as u64,
            Layout::Vecs { elem } => 4 + (self.dim * elem) as u64,
        }
    }
    fn row_offset(&self, row: usize) -> u64 {
        let base = match self.layout {
            Layout::Npy { offset, .. } => offset,
            Layout::Vecs { .. } => 0,
        };
        base + row as u64 * self.row_bytes()
    }

    /// Rows `start..end`, as f32, checked (record dimensions, NaN and infinity).
    pub fn read(&self, start: usize, end: usize) -> Result<Vectors> {
        let end = end.min(self.rows);
        let start = start.min(end);
        let n = end - start;
        let mut raw = vec![0u8; n * self.row_bytes() as usize];
        self.file
            .read_exact_at(&mut raw, self.row_offset(start))
            .map_err(|e| Error::io(&self.path, e))?;
        self.decode(&raw, start, n)
    }

    /// The rows `rows` (any order, repeats allowed), as f32, checked.
    pub fn gather(&self, rows: &[usize]) -> Result<Vectors> {
        let rb = self.row_bytes() as usize;
        let mut out = Vec::with_capacity(rows.len() * self.dim);
        let mut raw = vec![0u8; rb];
        for &r in rows {
            if r >= self.rows {
                return Err(Error::InvalidInput(format!(
                    "{}: row {r} of {}",
                    self.path.display(),
                    self.rows
                )));
            }
            self.file
                .read_exact_at(&mut raw, self.row_offset(r))
                .map_err(|e| Error::io(&self.path, e))?;
            out.extend_from_slice(self.decode(&raw, r, 1)?.as_slice());
        }
        Vectors::new(self.dim, out)
    }

    /// `n` rows of raw bytes (the first being row `first` of the file) to checked f32.
    fn decode(&self, raw: &[u8], first: usize, n: usize) -> Result<Vectors> {
        let d = self.dim;
        let mut v = vec![0f32; n * d];
        match self.layout {
            Layout::Npy { dtype, .. } => match dtype {
                Dtype::F32 => super::fill_from_bytes(&mut v, raw),
                Dtype::F64 => {
                    for (o, c) in v.iter_mut().zip(raw.chunks_exact(8)) {
                        *o = f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32;
                    }
                }
                Dtype::F16 => {
                    for (o, c) in v.iter_mut().zip(raw.chunks_exact(2)) {
                        *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                    }
                }
                _ => unreachable!("invariant: float dtypes only (checked at open)"),
            },
            Layout::Vecs { elem } => {
                let rec = 4 + d * elem;
                for (i, (r, o)) in raw.chunks_exact(rec).zip(v.chunks_exact_mut(d)).enumerate() {
                    let di = i32::from_le_bytes(r[..4].try_into().expect("4 bytes"));
                    if di as usize != d {
                        return Err(Error::corrupt(
                            &self.path,
                            format!("row {} has dimension {di}, row 0 has {d}", first + i),
                        ));
                    }
                    if elem == 4 {
                        super::fill_from_bytes(o, &r[4..]);
                    } else {
                        for (o, &b) in o.iter_mut().zip(&r[4..]) {
                            *o = f32::from(b);
                        }
                    }
                }
            }
        }
        let v = Vectors::new(d, v)?;
        // named by its row in the file, not in the chunk
        if let Some(bad) = v
            .view()
            .rows()
            .position(|r| r.iter().any(|x| !x.is_finite()))
        {
            return Err(Error::InvalidInput(format!(
                "{}: row {} holds NaN or infinity",
                self.path.display(),
                first + bad
            )));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_gathers_equal_the_whole_file_in_every_format() {
        let dir = tempfile::tempdir().unwrap();
        let v = crate::testutil::gaussian(1000, 7, 3);
        let npy = dir.path().join("v.npy");
        let fv = dir.path().join("v.fvecs");
        super::super::write_npy_f32(&npy, &v).unwrap();
        super::super::write_fvecs(&fv, &v).unwrap();
        for p in [&npy, &fv] {
            let f = VectorFile::open(p).unwrap();
            assert_eq!((f.len(), f.dim()), (1000, 7));
            let whole = super::super::read_vectors(p).unwrap();
            let mut joined = Vec::new();
            for s in (0..1000).step_by(333) {
                joined.extend_from_slice(f.read(s, s + 333).unwrap().as_slice());
            }
            assert_eq!(joined, whole.as_slice());
            let g = f.gather(&[999, 0, 5, 5]).unwrap();
            assert_eq!(g.row(0), whole.row(999));
            assert_eq!(g.row(3), whole.row(5));
        }
    }

    #[test]
    fn bad_rows_are_named_by_their_row_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = crate::testutil::gaussian(100, 4, 3);
        v.as_mut_slice()[70 * 4 + 2] = f32::NAN;
        let p = dir.path().join("v.npy");
        super::super::write_npy_f32(&p, &v).unwrap();
        let f = VectorFile::open(&p).unwrap();
        assert!(f.read(0, 50).is_ok());
        let e = f.read(50, 100).unwrap_err().to_string();
        assert!(e.contains("row 70"), "{e}");
        // a truncated fvecs file is refused at open
        let fv = dir.path().join("t.fvecs");
        std::fs::write(&fv, [4u8, 0, 0, 0, 1, 2, 3]).unwrap();
        let e = VectorFile::open(&fv).unwrap_err().to_string();
        assert!(e.contains("whole number of records"), "{e}");
    }
}

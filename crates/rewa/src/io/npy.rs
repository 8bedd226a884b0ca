//! NumPy `.npy` files, format versions 1.0 to 3.0, C order, little-endian.

use super::{as_bytes, fill_from_bytes, write_atomic};
use crate::error::{Error, Result};
use crate::vectors::Vectors;
use std::io::{Read, Seek};
use std::path::Path;

/// The payload of a `.npy` file.
#[derive(Debug)]
pub enum NpyData {
    /// float16, float32 or float64, converted to f32.
    Float(Vec<f32>),
    /// Any integer type, widened.
    Int(Vec<i64>),
    /// uint8 bytes (codes).
    U8(Vec<u8>),
}

/// A decoded `.npy` array.
#[derive(Debug)]
pub struct NpyArray {
    /// The shape from the header.
    pub shape: Vec<usize>,
    /// The values.
    pub data: NpyData,
}

impl NpyArray {
    /// A 2-D float array as vectors.
    pub fn into_vectors(self, path: &Path) -> Result<Vectors> {
        let bad = |r: String| Error::InvalidInput(format!("{}: {r}", path.display()));
        if self.shape.len() != 2 {
            return Err(bad(format!(
                "expected a 2-D array (rows x dim), found {}-D shape {:?}",
                self.shape.len(),
                self.shape
            )));
        }
        let (rows, dim) = (self.shape[0], self.shape[1]);
        if rows == 0 {
            return Err(bad("holds zero vectors".into()));
        }
        if dim == 0 {
            return Err(bad("vectors have dimension 0".into()));
        }
        match self.data {
            NpyData::Float(v) => Vectors::new(dim, v),
            _ => Err(bad(
                "holds integers; vectors must be float16, float32 or float64 (e.g. numpy's astype('float32'))".into(),
            )),
        }
    }

    /// A 1-D integer array (or 2-D with one column) as labels.
    pub fn into_labels(self, path: &Path) -> Result<Vec<i64>> {
        let ok_shape = self.shape.len() == 1 || (self.shape.len() == 2 && self.shape[1] == 1);
        if !ok_shape {
            return Err(Error::InvalidInput(format!(
                "{}: labels must be a 1-D array, found shape {:?}",
                path.display(),
                self.shape
            )));
        }
        match self.data {
            NpyData::Int(v) => Ok(v),
            NpyData::U8(v) => Ok(v.into_iter().map(i64::from).collect()),
            NpyData::Float(v) if v.iter().all(|x| x.fract() == 0.0) => {
                Ok(v.into_iter().map(|x| x as i64).collect())
            }
            NpyData::Float(_) => Err(Error::InvalidInput(format!(
                "{}: labels must be integers",
                path.display()
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Dtype {
    F16,
    F32,
    F64,
    U8,
    I8,
    I16,
    I32,
    I64,
    U16,
    U32,
    U64,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        Some(match descr {
            "<f2" => Dtype::F16,
            "<f4" => Dtype::F32,
            "<f8" => Dtype::F64,
            "|u1" | "<u1" => Dtype::U8,
            "|i1" | "<i1" => Dtype::I8,
            "<i2" => Dtype::I16,
            "<i4" => Dtype::I32,
            "<i8" => Dtype::I64,
            "<u2" => Dtype::U16,
            "<u4" => Dtype::U32,
            "<u8" => Dtype::U64,
            _ => return None,
        })
    }
    pub(crate) fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::F16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// The dtype, the payload's byte offset and the shape of the `.npy` file `f` (`file_len`
/// bytes), its header checked: the payload must be exactly the shape's size.
pub(crate) fn npy_layout(
    f: &std::fs::File,
    path: &Path,
    file_len: u64,
) -> Result<(Dtype, u64, Vec<usize>)> {
    use std::os::unix::fs::FileExt;
    let corrupt = |r: &str| Error::corrupt(path, r.to_string());
    let mut pre = [0u8; 12];
    let got = f.read_at(&mut pre, 0).map_err(|e| Error::io(path, e))?;
    if got < 10 {
        return Err(corrupt("too short for a .npy header"));
    }
    if &pre[..6] != MAGIC {
        return Err(corrupt("not a .npy file (bad magic)"));
    }
    let (hlen, pre_len) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10),
        2 | 3 => {
            if got < 12 {
                return Err(corrupt("truncated header"));
            }
            (
                u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as usize,
                12,
            )
        }
        v => return Err(corrupt(&format!("unknown .npy format version {v}"))),
    };
    if hlen as u64 + pre_len as u64 > file_len || hlen > 1 << 20 {
        return Err(corrupt("truncated header"));
    }
    let mut header = vec![0u8; hlen];
    f.read_exact_at(&mut header, pre_len as u64)
        .map_err(|_| corrupt("truncated header"))?;
    let header = String::from_utf8_lossy(&header);
    let descr = dict_str(&header, "descr").ok_or_else(|| corrupt("header has no 'descr'"))?;
    let fortran = dict_raw(&header, "fortran_order")
        .ok_or_else(|| corrupt("header has no 'fortran_order'"))?;
    let shape = parse_shape(&header).ok_or_else(|| corrupt("header has no valid 'shape'"))?;
    if fortran.starts_with("True") {
        return Err(Error::InvalidInput(format!(
            "{}: Fortran-order arrays are not supported; save with np.ascontiguousarray",
            path.display()
        )));
    }
    let dtype = Dtype::parse(&descr).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{}: unsupported dtype {descr:?}: vectors must be little-endian float16, float32 or float64 ('<f2', '<f4', '<f8'); labels little-endian integers",
            path.display()
        ))
    })?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| corrupt("shape overflows"))?;
    let need = (count as u64).saturating_mul(dtype.size() as u64);
    let have = file_len - (pre_len + hlen) as u64;
    if have != need {
        return Err(corrupt(&format!(
            "payload is {have} bytes, but shape {shape:?} of {descr} needs {need}{}",
            if have < need { " (truncated)" } else { "" }
        )));
    }
    Ok((dtype, (pre_len + hlen) as u64, shape))
}

/// Reads a whole `.npy` file. Fails with `Corrupt` on a bad header or truncated payload and with
/// `InvalidInput` on Fortran order or an unsupported dtype.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    super::check_readable(path, u64::MAX)?;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let (dtype, offset, shape) = npy_layout(&f, path, file_len)?;
    let count: usize = shape.iter().product();
    let need = (count as u64).saturating_mul(dtype.size() as u64);
    f.seek(std::io::SeekFrom::Start(offset))
        .map_err(|e| Error::io(path, e))?;
    if let Dtype::F32 = dtype {
        // straight into the floats: one buffer of the file's size instead of two, and no copy
        // (a 3 GB base spent as long faulting in and copying the second buffer as reading)
        let mut v = vec![0f32; count];
        f.read_exact(bytemuck::cast_slice_mut(&mut v))
            .map_err(|e| Error::io(path, e))?;
        return Ok(NpyArray {
            shape,
            data: NpyData::Float(v),
        });
    }
    let mut bytes = vec![0u8; need as usize];
    f.read_exact(&mut bytes).map_err(|e| Error::io(path, e))?;
    let data = decode(dtype, &bytes, count);
    Ok(NpyArray { shape, data })
}

fn decode(dtype: Dtype, bytes: &[u8], count: usize) -> NpyData {
    fn ints<T: bytemuck::Pod + Default + Into<i64>>(bytes: &[u8], n: usize) -> Vec<i64> {
        let mut v = vec![T::default(); n];
        fill_from_bytes(&mut v, bytes);
        v.into_iter().map(Into::into).collect()
    }
    match dtype {
        Dtype::F32 => {
            let mut v = vec![0f32; count];
            fill_from_bytes(&mut v, bytes);
            NpyData::Float(v)
        }
        Dtype::F64 => {
            let mut v = vec![0f64; count];
            fill_from_bytes(&mut v, bytes);
            NpyData::Float(v.into_iter().map(|x| x as f32).collect())
        }
        Dtype::F16 => {
            let mut v = vec![half::f16::ZERO; count];
            fill_from_bytes(&mut v, bytes);
            NpyData::Float(v.into_iter().map(f32::from).collect())
        }
        Dtype::U8 => NpyData::U8(bytes.to_vec()),
        Dtype::I8 => NpyData::Int(bytes.iter().map(|&b| b as i8 as i64).collect()),
        Dtype::I16 => NpyData::Int(
            bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
        ),
        Dtype::U16 => NpyData::Int(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
        ),
        Dtype::I32 => NpyData::Int(ints::<i32>(bytes, count)),
        Dtype::U32 => NpyData::Int(ints::<u32>(bytes, count)),
        Dtype::I64 => NpyData::Int(ints::<i64>(bytes, count)),
        Dtype::U64 => NpyData::Int(
            bytes
                .chunks_exact(8)
                // saturate: a wrapped value would read as negative (ids skip -1 padding)
                .map(|c| {
                    i64::try_from(u64::from_le_bytes(c.try_into().unwrap())).unwrap_or(i64::MAX)
                })
                .collect(),
        ),
    }
}

fn dict_raw<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}'");
    let at = header.find(&pat)? + pat.len();
    let rest = header[at..].trim_start().strip_prefix(':')?;
    Some(rest.trim_start())
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let rest = dict_raw(header, key)?;
    let q = rest.chars().next()?;
    if q != '\'' && q != '"' {
        return None;
    }
    let end = rest[1..].find(q)?;
    Some(rest[1..1 + end].to_string())
}

fn parse_shape(header: &str) -> Option<Vec<usize>> {
    let rest = dict_raw(header, "shape")?.strip_prefix('(')?;
    let end = rest.find(')')?;
    rest[..end]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse().ok())
        .collect()
}

fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Pad so that the payload starts on a 64-byte boundary, ending with a newline.
    let total = MAGIC.len() + 4 + h.len() + 1;
    h.push_str(&" ".repeat((64 - total % 64) % 64));
    h.push('\n');
    let mut out = Vec::with_capacity(10 + h.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

/// A float32 `.npy` of a known shape written a block of rows at a time (sets larger than
/// memory): into a temporary file beside the target, fsynced and renamed by
/// [`NpyWriter::finish`] (dropped unfinished, the temporary file is removed).
pub struct NpyWriter {
    target: std::path::PathBuf,
    tmp: std::path::PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    left: u64,
}

impl NpyWriter {
    /// Starts `path` for `rows x cols` floats.
    pub fn create(path: &Path, rows: usize, cols: usize) -> Result<NpyWriter> {
        use std::io::Write;
        let target = super::write_target(path)?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = target.with_file_name(format!(".{name}.tmp{}", std::process::id()));
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(4 << 20, f);
        out.write_all(&npy_header_f32(rows, cols))
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(NpyWriter {
            target,
            tmp,
            out: Some(out),
            left: (rows as u64) * (cols as u64),
        })
    }
    /// Appends rows.
    pub fn write(&mut self, values: &[f32]) -> Result<()> {
        use std::io::Write;
        if values.len() as u64 > self.left {
            return Err(Error::InvalidInput(format!(
                "{}: more values than its shape holds",
                self.target.display()
            )));
        }
        self.left -= values.len() as u64;
        let out = self.out.as_mut().expect("invariant: open until finish");
        out.write_all(as_bytes(values))
            .map_err(|e| Error::io(&self.tmp, e))
    }
    /// Checks that every row was written, fsyncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.left != 0 {
            return Err(Error::InvalidInput(format!(
                "{}: {} values short of its shape",
                self.target.display(),
                self.left
            )));
        }
        let out = self.out.take().expect("invariant: open until finish");
        let f = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))
    }
}

impl Drop for NpyWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The header of a 2-D `<f4` array of `rows x cols`. Written first, then followed by the
/// `rows * cols` floats in little-endian order, it streams an .npy whose shape is known before
/// its rows are (as `rewa embed` does).
pub fn npy_header_f32(rows: usize, cols: usize) -> Vec<u8> {
    header("<f4", &[rows, cols])
}

/// Writes vectors as a 2-D `<f4` array, atomically.
pub fn write_npy_f32(path: &Path, v: &Vectors) -> Result<()> {
    write_atomic(
        path,
        &[&header("<f4", &[v.len(), v.dim()]), as_bytes(v.as_slice())],
    )
}

/// Writes `rows x cols` bytes as a 2-D `|u1` array, atomically.
pub fn write_npy_u8(path: &Path, rows: usize, cols: usize, data: &[u8]) -> Result<()> {
    assert_eq!(
        rows * cols,
        data.len(),
        "write_npy_u8: shape does not match data"
    );
    write_atomic(path, &[&header("|u1", &[rows, cols]), data])
}

/// Writes an `<i8` array of `shape` (1-D when `shape` is `[data.len()]`), atomically.
pub fn write_npy_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "write_npy_i64: shape does not match data"
    );
    write_atomic(path, &[&header("<i8", shape), as_bytes(data)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A `.npy` of `descr` and `shape` with `payload` as its bytes.
    fn npy(dir: &Path, name: &str, descr: &str, shape: &[usize], payload: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, [header(descr, shape), payload.to_vec()].concat()).unwrap();
        p
    }

    #[test]
    fn vector_dtype_errors_say_exactly_which_dtypes_vectors_take() {
        let t = tempfile::tempdir().unwrap();
        // integers decode (they are labels' dtype) but are not vectors
        let ints = npy(t.path(), "i.npy", "<i4", &[2, 2], &[0; 16]);
        // big-endian floats and complex numbers are not read at all
        let big = npy(t.path(), "b.npy", ">f4", &[2, 2], &[0; 16]);
        let complex = npy(t.path(), "c.npy", "<c8", &[2, 1], &[0; 16]);
        for p in [&ints, &big, &complex] {
            let e = crate::io::read_vectors(p).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::InvalidInput(_)), "{msg}");
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            assert!(
                msg.contains("vectors must be float16, float32 or float64")
                    || msg.contains("vectors must be little-endian float16, float32 or float64"),
                "does not say what vectors take: {msg}"
            );
            assert!(!msg.contains("and integers"), "offers integers: {msg}");
        }
        // and the same integers are fine as labels
        assert_eq!(
            crate::io::read_labels(&npy(
                t.path(),
                "l.npy",
                "<i4",
                &[2],
                &[1, 0, 0, 0, 2, 0, 0, 0]
            ))
            .unwrap(),
            [1, 2]
        );
    }

    #[test]
    fn a_streamed_f32_npy_equals_the_written_one() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vectors::new(3, (0..12).map(|i| i as f32 * 0.5).collect()).unwrap();
        let path = dir.path().join("v.npy");
        write_npy_f32(&path, &v).unwrap();
        let mut streamed = npy_header_f32(4, 3);
        assert_eq!(streamed.len() % 64, 0);
        for x in v.as_slice() {
            streamed.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(std::fs::read(&path).unwrap(), streamed);
    }
}

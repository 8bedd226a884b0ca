//! Reading and writing vector files: `.npy` (NumPy), `.fvecs`, `.bvecs`, `.ivecs` (TEXMEX).
//!
//! Every reader checks the whole file before returning: a bad header, a truncated payload,
//! NaN or infinity (naming the row), and an empty set are errors carrying the path.

mod fvecs;
mod npy;
mod stream;

pub use fvecs::{read_bvecs, read_fvecs, read_ivecs, write_fvecs};
pub use npy::{
    npy_header_f32, read_npy, write_npy_f32, write_npy_i64, write_npy_u8, NpyArray, NpyData,
    NpyWriter,
};
pub use stream::VectorFile;

use crate::error::{Error, Result};
use crate::vectors::Vectors;
use std::path::Path;

/// The most bytes a text input (labels, ids, qrels, a model config) may hold.
pub(crate) const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Fails unless `path` is a regular file (after symlinks) of at most `max` bytes: a FIFO
/// would block a read, a device or a huge sparse file would never end.
pub(crate) fn check_readable(path: &Path, max: u64) -> Result<()> {
    match unreadable_because(path, max)? {
        Some(reason) => Err(Error::InvalidInput(format!("{}: {reason}", path.display()))),
        None => Ok(()),
    }
}

/// Why `path` must not be read (not a regular file, or more than `max` bytes), if it must not;
/// an error if it cannot be looked at. Inputs and index files word their errors differently.
pub(crate) fn unreadable_because(path: &Path, max: u64) -> Result<Option<String>> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(if !md.is_file() {
        Some("not a regular file".into())
    } else if md.len() > max {
        Some(format!(
            "{} bytes, more than the {max} such a file may hold",
            md.len()
        ))
    } else {
        None
    })
}

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
    check_readable(path, MAX_TEXT_BYTES)?;
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

/// Writes `bytes` to `path` atomically: a temporary file beside the final target, fsync,
/// rename.
///
/// A symlink is followed: the data goes to (and the rename lands on) the file it points to,
/// so the link stays a link. An existing path that is not a regular file (a directory, a
/// device such as `/dev/null`, a FIFO, a socket) is refused: renaming onto it would replace
/// the node with a regular file.
pub fn write_atomic(path: &Path, bytes: &[&[u8]]) -> Result<()> {
    use std::io::Write;
    let target = write_target(path)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        for b in bytes {
            f.write_all(b)?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Checks, without writing, that the writers here could write `path`: it is missing, a
/// regular file, or a symlink to one of those (a directory, device, FIFO or socket is
/// refused). Lets a command refuse a bad output before it writes any other.
pub fn check_writable(path: &Path) -> Result<()> {
    write_target(path).map(|_| ())
}

/// The file `write_atomic` replaces for `path`: `path` itself, or the end of its chain of
/// symlinks (which need not exist yet). Fails on anything but a regular file or nothing.
fn write_target(path: &Path) -> Result<std::path::PathBuf> {
    // Linux's own limit on links followed in one lookup.
    const MAX_LINKS: usize = 40;
    let mut p = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(Error::io(&p, e)),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let to = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
            p = match p.parent() {
                Some(dir) if to.is_relative() => dir.join(to),
                _ => to,
            };
            continue;
        }
        if ft.is_file() {
            return Ok(p);
        }
        let what = if ft.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, FIFO or socket)"
        };
        let via = if p == path {
            String::new()
        } else {
            format!(" (the symlink points to {})", p.display())
        };
        return Err(Error::InvalidInput(format!(
            "{}: is {what}{via}; refusing to replace it: give the path of a regular file",
            path.display()
        )));
    }
    Err(Error::InvalidInput(format!(
        "{}: more than {MAX_LINKS} levels of symlinks",
        path.display()
    )))
}

/// Views a slice of plain numbers as bytes (little-endian hosts only; see `lib.rs`).
pub(crate) fn as_bytes<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Fills `out` from little-endian bytes; `bytes.len()` must equal `out`'s byte size.
pub(crate) fn fill_from_bytes<T: bytemuck::Pod>(out: &mut [T], bytes: &[u8]) {
    bytemuck::cast_slice_mut::<T, u8>(out).copy_from_slice(bytes);
}

/// Writes `text` to `path` atomically (see `write_atomic`: symlinks followed, special files
/// refused).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, &[text.as_bytes()])
}

/// Little-endian f32 bytes as floats: borrowed when aligned, copied otherwise.
pub(crate) fn f32_cow(bytes: &[u8]) -> std::borrow::Cow<'_, [f32]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(v) => std::borrow::Cow::Borrowed(v),
        Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn atomic_writes_follow_symlinks_and_refuse_special_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        // a link to an existing file, a relative link to a missing one, a link to a link
        std::fs::create_dir(d.join("data")).unwrap();
        std::fs::write(d.join("data/real.bin"), b"old").unwrap();
        std::os::unix::fs::symlink(d.join("data/real.bin"), d.join("link")).unwrap();
        std::os::unix::fs::symlink("new.bin", d.join("data/rel")).unwrap();
        std::os::unix::fs::symlink(d.join("link"), d.join("link2")).unwrap();
        for p in ["link", "data/rel", "link2", "missing"] {
            check_writable(&d.join(p)).unwrap();
        }
        write_atomic(&d.join("link"), &[b"new", b"!"]).unwrap();
        write_atomic(&d.join("data/rel"), &[b"made"]).unwrap();
        write_atomic(&d.join("link2"), &[b"twice"]).unwrap();
        for l in ["link", "data/rel", "link2"] {
            let m = std::fs::symlink_metadata(d.join(l)).unwrap();
            assert!(m.file_type().is_symlink(), "{l} is no longer a symlink");
        }
        assert_eq!(std::fs::read(d.join("data/real.bin")).unwrap(), b"twice");
        assert_eq!(std::fs::read(d.join("data/new.bin")).unwrap(), b"made");
        // no temporary file is left beside the targets
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&d.join("data")), ["new.bin", "real.bin", "rel"]);

        // a FIFO, a link to it, and a directory are refused and left as they were
        let fifo = d.join("fifo");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        std::os::unix::fs::symlink(&fifo, d.join("to-fifo")).unwrap();
        for p in [fifo.clone(), d.join("to-fifo"), d.join("data")] {
            assert!(matches!(check_writable(&p), Err(Error::InvalidInput(_))));
            let e = write_atomic(&p, &[b"x"]).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains(&p.display().to_string()) && msg.contains("refusing"),
                "{msg}"
            );
        }
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(std::fs::symlink_metadata(d.join("to-fifo"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(d.join("data").is_dir());
        // a loop of links ends with an error, not a hang
        std::os::unix::fs::symlink(d.join("b"), d.join("a")).unwrap();
        std::os::unix::fs::symlink(d.join("a"), d.join("b")).unwrap();
        assert!(matches!(
            write_atomic(&d.join("a"), &[b"x"]),
            Err(Error::InvalidInput(_))
        ));
    }
}

//! The seed's synthetic data: Gaussian class clusters on the unit sphere, reproducibly seeded.
//!
//! Class centroids are drawn from N(0, I), normalised and scaled by 3; a sample is
//! `centroid + N(0, noise^2 I)`, then L2-normalised. Each class, and each query set, draws
//! from its own ChaCha8 stream, so the data is the same whatever the thread count, and
//! classes can be generated in parallel.

use crate::error::{invalid, Result};
use crate::vectors::Vectors;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// What to generate.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// Classes in the base set.
    pub classes: usize,
    /// Base vectors per class.
    pub per_class: usize,
    /// Vector dimension.
    pub dim: usize,
    /// Standard deviation of the per-coordinate noise.
    pub noise: f32,
    /// Held-out queries per class (same classes as the base, never in the base).
    pub queries_per_class: usize,
    /// Classes never seen in the base; they get their own base and queries.
    pub new_classes: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            classes: 50,
            per_class: 100,
            dim: 768,
            noise: 0.3,
            queries_per_class: 10,
            new_classes: 10,
            seed: 0,
        }
    }
}

/// Generated vectors and labels.
#[derive(Clone, Debug)]
pub struct SynthData {
    /// `classes * per_class` vectors, class-major.
    pub base: Vectors,
    /// Class of each base vector.
    pub labels: Vec<i64>,
    /// Held-out queries from the base's classes.
    pub queries_same: Vectors,
    /// Their classes.
    pub queries_same_labels: Vec<i64>,
    /// `new_classes * per_class` vectors from classes not in `base`.
    pub base_new: Vectors,
    /// Their classes (numbered after the base's).
    pub base_new_labels: Vec<i64>,
    /// Queries from the new classes.
    pub queries_new: Vectors,
    /// Their classes.
    pub queries_new_labels: Vec<i64>,
}

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

const CENTROIDS: u64 = 0;
const BASE: u64 = 1 << 40;
const QUERIES: u64 = 2 << 40;

fn samples(centroid: &[f32], count: usize, noise: f32, mut r: ChaCha8Rng, out: &mut Vec<f32>) {
    for _ in 0..count {
        let start = out.len();
        for &c in centroid {
            let z: f32 = StandardNormal.sample(&mut r);
            out.push(c + noise * z);
        }
        crate::vectors::normalize(&mut out[start..]);
    }
}

fn gen_set(
    cents: &[Vec<f32>],
    first: usize,
    count: usize,
    cfg: &SynthConfig,
    stream: u64,
) -> (Vectors, Vec<i64>) {
    let parts: Vec<Vec<f32>> = cents
        .par_iter()
        .enumerate()
        .map(|(c, cent)| {
            let mut v = Vec::with_capacity(count * cfg.dim);
            samples(
                cent,
                count,
                cfg.noise,
                rng(cfg.seed, stream + (first + c) as u64),
                &mut v,
            );
            v
        })
        .collect();
    let labels = (0..cents.len())
        .flat_map(|c| std::iter::repeat_n((first + c) as i64, count))
        .collect();
    (
        Vectors::new(cfg.dim, parts.concat()).expect("invariant: dim >= 1"),
        labels,
    )
}

/// The most `generate` makes: 16 GiB of f32 values over the four sets, so that a mistyped
/// count is refused instead of aborting the process on allocation.
pub const MAX_SYNTH_BYTES: u64 = 16 << 30;

/// Generates the data set described by `cfg`. Fails when a count is 0 or the data would take
/// more than [`MAX_SYNTH_BYTES`].
pub fn generate(cfg: &SynthConfig) -> Result<SynthData> {
    check(cfg, MAX_SYNTH_BYTES, "GiB", 30)?;
    let cents = centroids(cfg);
    let (old, new) = cents.split_at(cfg.classes);
    let (base, labels) = gen_set(old, 0, cfg.per_class, cfg, BASE);
    let (queries_same, queries_same_labels) = gen_set(old, 0, cfg.queries_per_class, cfg, QUERIES);
    let (base_new, base_new_labels) = gen_set(new, cfg.classes, cfg.per_class, cfg, BASE);
    let (queries_new, queries_new_labels) =
        gen_set(new, cfg.classes, cfg.queries_per_class, cfg, QUERIES);
    Ok(SynthData {
        base,
        labels,
        queries_same,
        queries_same_labels,
        base_new,
        base_new_labels,
        queries_new,
        queries_new_labels,
    })
}

/// The most [`write`] makes on disk: 1 TiB of f32 values over the four sets (a mistyped count
/// is refused instead of filling the disk).
pub const MAX_SYNTH_WRITE_BYTES: u64 = 1 << 40;

/// Writes the data set `cfg` describes into `dir` as [`generate`] makes it, byte for byte, a
/// group of classes at a time: memory holds one group (about 64 MiB of vectors), not the set,
/// so sets larger than memory can be written. Files: `base.npy`, `labels.npy`,
/// `queries_same.npy`, `queries_same_labels.npy`, `base_new.npy`, `base_new_labels.npy`,
/// `queries_new.npy`, `queries_new_labels.npy` (empty sets are skipped), each written under a
/// temporary name and renamed when complete. `progress(done, total)` counts vectors.
pub fn write(
    cfg: &SynthConfig,
    dir: &std::path::Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    check(cfg, MAX_SYNTH_WRITE_BYTES, "TiB", 40)?;
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let cents = centroids(cfg);
    let (old, new) = cents.split_at(cfg.classes);
    let total = ((cfg.classes + cfg.new_classes) * (cfg.per_class + cfg.queries_per_class)) as u64;
    let mut done = 0u64;
    for (name, labels, cents, first, count, stream) in [
        ("base", "labels", old, 0, cfg.per_class, BASE),
        (
            "queries_same",
            "queries_same_labels",
            old,
            0,
            cfg.queries_per_class,
            QUERIES,
        ),
        (
            "base_new",
            "base_new_labels",
            new,
            cfg.classes,
            cfg.per_class,
            BASE,
        ),
        (
            "queries_new",
            "queries_new_labels",
            new,
            cfg.classes,
            cfg.queries_per_class,
            QUERIES,
        ),
    ] {
        let rows = cents.len() * count;
        if rows == 0 {
            continue;
        }
        let path = dir.join(format!("{name}.npy"));
        let mut out = crate::io::NpyWriter::create(&path, rows, cfg.dim)?;
        // classes per group: about 64 MiB of vectors
        let group = ((64usize << 20) / (count * cfg.dim * 4).max(1)).max(1);
        for (g, cs) in cents.chunks(group).enumerate() {
            let (v, _) = gen_set(cs, first + g * group, count, cfg, stream);
            out.write(v.as_slice())?;
            done += v.len() as u64;
            progress(done, total);
        }
        out.finish()?;
        let l: Vec<i64> = (0..cents.len())
            .flat_map(|c| std::iter::repeat_n((first + c) as i64, count))
            .collect();
        crate::io::write_npy_i64(&dir.join(format!("{labels}.npy")), &[l.len()], &l)?;
    }
    Ok(())
}

/// Fails when a count is 0, the noise is not a finite number >= 0, or the four sets would
/// take more than `max` bytes (`unit`, `2^shift` bytes, in the message).
fn check(cfg: &SynthConfig, max: u64, unit: &str, shift: u32) -> Result<()> {
    if cfg.classes == 0 || cfg.per_class == 0 || cfg.dim == 0 {
        return invalid!("synth: classes, per_class and dim must all be at least 1");
    }
    let bytes = (cfg.classes as u64)
        .checked_add(cfg.new_classes as u64)
        .zip((cfg.per_class as u64).checked_add(cfg.queries_per_class as u64))
        .and_then(|(c, per)| c.checked_mul(per))
        .and_then(|n| n.checked_mul(cfg.dim as u64))
        .and_then(|v| v.checked_mul(4));
    if !matches!(bytes, Some(b) if b <= max) {
        return invalid!(
            "synth: (--classes {} + --new-classes {}) x (--per-class {} + --queries-per-class {}) x --dim {} floats of 4 bytes are more than the {} {unit} limit",
            cfg.classes,
            cfg.new_classes,
            cfg.per_class,
            cfg.queries_per_class,
            cfg.dim,
            max >> shift
        );
    }
    if !(cfg.noise.is_finite() && cfg.noise >= 0.0) {
        return invalid!("synth: noise must be a finite number >= 0");
    }
    Ok(())
}

/// The class centroids (base classes, then new ones).
fn centroids(cfg: &SynthConfig) -> Vec<Vec<f32>> {
    let mut cr = rng(cfg.seed, CENTROIDS);
    (0..cfg.classes + cfg.new_classes)
        .map(|_| {
            let mut c: Vec<f32> = (0..cfg.dim)
                .map(|_| StandardNormal.sample(&mut cr))
                .collect();
            crate::vectors::normalize(&mut c);
            c.iter_mut().for_each(|x| *x *= 3.0);
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_normalised_and_held_out() {
        let cfg = SynthConfig {
            classes: 5,
            per_class: 20,
            dim: 16,
            new_classes: 2,
            queries_per_class: 3,
            ..Default::default()
        };
        let a = generate(&cfg).unwrap();
        let b = generate(&cfg).unwrap();
        assert_eq!(a.base, b.base);
        assert_eq!(a.queries_new, b.queries_new);
        assert_eq!(
            (
                a.base.len(),
                a.queries_same.len(),
                a.base_new.len(),
                a.queries_new.len()
            ),
            (100, 15, 40, 6)
        );
        for r in a.base.view().rows() {
            assert!((crate::distance::dot(r, r) - 1.0).abs() < 1e-5);
        }
        // Queries are new draws, not copies of base rows.
        for q in a.queries_same.view().rows() {
            assert!(a.base.view().rows().all(|r| r != q));
        }
        assert!(a.base_new_labels.iter().all(|&l| l >= 5));
        let c = generate(&SynthConfig { seed: 1, ..cfg }).unwrap();
        assert_ne!(a.base, c.base);
    }

    #[test]
    fn written_files_equal_the_generated_set() {
        let cfg = SynthConfig {
            classes: 7,
            per_class: 30,
            dim: 12,
            new_classes: 2,
            queries_per_class: 3,
            ..Default::default()
        };
        let a = generate(&cfg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        write(&cfg, dir.path(), &mut |d, t| {
            assert!(d > last && d <= t);
            last = d;
        })
        .unwrap();
        assert_eq!(last, (9 * 33) as u64);
        let read = |n: &str| crate::io::read_vectors(&dir.path().join(n)).unwrap();
        assert_eq!(read("base.npy"), a.base);
        assert_eq!(read("queries_same.npy"), a.queries_same);
        assert_eq!(read("base_new.npy"), a.base_new);
        assert_eq!(read("queries_new.npy"), a.queries_new);
        let labels = crate::io::read_labels(&dir.path().join("base_new_labels.npy")).unwrap();
        assert_eq!(labels, a.base_new_labels);
        // no temporary file is left
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".npy")));
    }

    #[test]
    fn sizes_past_the_limit_are_refused_without_allocating() {
        let ok = SynthConfig {
            classes: 2,
            per_class: 3,
            dim: 4,
            ..Default::default()
        };
        for bad in [
            SynthConfig {
                classes: usize::MAX,
                ..ok.clone()
            },
            SynthConfig {
                new_classes: usize::MAX,
                ..ok.clone()
            },
            SynthConfig {
                per_class: usize::MAX,
                ..ok.clone()
            },
            SynthConfig {
                per_class: 1 << 40,
                ..ok.clone()
            },
            SynthConfig {
                queries_per_class: usize::MAX,
                ..ok.clone()
            },
            SynthConfig {
                dim: usize::MAX / 2,
                ..ok.clone()
            },
            // one float past the limit
            SynthConfig {
                classes: 1,
                new_classes: 0,
                per_class: 1,
                queries_per_class: 0,
                dim: (MAX_SYNTH_BYTES / 4 + 1) as usize,
                ..ok.clone()
            },
        ] {
            let e = generate(&bad).unwrap_err();
            assert!(
                matches!(&e, crate::Error::InvalidInput(m) if m.contains("GiB limit") && m.contains("--per-class")),
                "{bad:?}: {e}"
            );
        }
        assert!(generate(&ok).is_ok());
    }
}

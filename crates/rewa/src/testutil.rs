//! Seeded data generators for tests and benches.

use crate::synth::{generate, SynthConfig};
use crate::vectors::Vectors;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// `n` vectors of i.i.d. N(0, 1) coordinates.
pub fn gaussian(n: usize, dim: usize, seed: u64) -> Vectors {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    Vectors::new(
        dim,
        (0..n * dim)
            .map(|_| StandardNormal.sample(&mut r))
            .collect(),
    )
    .expect("dim >= 1")
}

/// A seeded xorshift64 stream of words: cheap test data, the same on every platform.
pub fn xorshift(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Clustered unit vectors (the synth recipe): returns (base, base labels, queries, query labels),
/// queries held out from the base.
pub fn clusters(
    classes: usize,
    per_class: usize,
    dim: usize,
    noise: f32,
    seed: u64,
) -> (Vectors, Vec<i64>, Vectors, Vec<i64>) {
    let d = generate(&SynthConfig {
        classes,
        per_class,
        dim,
        noise,
        queries_per_class: 2,
        new_classes: 0,
        seed,
    })
    .expect("valid synth config");
    (d.base, d.labels, d.queries_same, d.queries_same_labels)
}

//! Kernel throughput: each fast kernel beside its scalar reference twin, and the blocked
//! Hamming scan. Quality is not measured here (`rewa eval` / `rewa bench` do that).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rewa::distance::*;
use rewa::encode::Quantizer;
use std::hint::black_box;

fn kernels(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for dim in [128usize, 768, 1536] {
        let a: Vec<f32> = (0..dim).map(|_| rng.random()).collect();
        let b: Vec<f32> = (0..dim).map(|_| rng.random()).collect();
        let code: Vec<u8> = (0..dim).map(|_| rng.random()).collect();
        let mut g = c.benchmark_group(format!("dim{dim}"));
        g.bench_function("dot", |x| x.iter(|| dot(black_box(&a), black_box(&b))));
        g.bench_function("dot_reference", |x| {
            x.iter(|| dot_reference(black_box(&a), black_box(&b)))
        });
        g.bench_function("dot_u8", |x| {
            x.iter(|| dot_u8(black_box(&a), black_box(&code)))
        });
        g.bench_function("dot_u8_reference", |x| {
            x.iter(|| dot_u8_reference(black_box(&a), black_box(&code)))
        });
        g.bench_function("hamming", |x| {
            x.iter(|| hamming(black_box(&code), black_box(&code[..])))
        });
        g.bench_function("hamming_reference", |x| {
            x.iter(|| hamming_reference(black_box(&code), black_box(&code[..])))
        });
        g.finish();
    }
    // Blocked scan of 256-bit codes: 100k codes x 64 queries, top-10.
    let n = 100_000;
    let codes: Vec<u8> = (0..n * 32).map(|_| rng.random()).collect();
    let queries: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..32).map(|_| rng.random()).collect())
        .collect();
    let mut g = c.benchmark_group("scan_hamming_256bit");
    g.throughput(Throughput::Elements((n * queries.len()) as u64));
    g.sample_size(10);
    g.bench_function("blocked", |x| {
        x.iter(|| {
            rewa::search::scan_sign(
                black_box(&queries),
                black_box(&codes),
                32,
                10,
                rewa::search::Allow::ALL,
            )
        })
    });
    g.finish();
    // The same codes scored against float queries (asign: one table lookup per byte), beside
    // the reference that walks the bits.
    let q = rewa::encode::SignAsymQuantizer::new(
        rewa::encode::SignQuantizer::from_thresholds(vec![0.0; 256]),
        Metric::Ip,
    );
    let fq: Vec<Vec<f32>> = (0..64)
        .map(|_| (0..256).map(|_| rng.random::<f32>() - 0.5).collect())
        .collect();
    let prepared: Vec<_> = fq.iter().map(|v| q.prepare(v)).collect();
    let mut g = c.benchmark_group("asign_256bit");
    g.bench_function("distance", |x| {
        x.iter(|| q.distance(black_box(&prepared[0]), black_box(&codes[..32])))
    });
    g.bench_function("distance_reference", |x| {
        x.iter(|| rewa::encode::asym_distance_reference(black_box(&fq[0]), black_box(&codes[..32])))
    });
    g.bench_function("prepare", |x| x.iter(|| q.prepare(black_box(&fq[0]))));
    g.throughput(Throughput::Elements((n * prepared.len()) as u64));
    g.sample_size(10);
    g.bench_function("scan_100k", |x| {
        x.iter(|| {
            rewa::search::scan_codes(
                &q,
                black_box(&prepared),
                black_box(&codes),
                10,
                rewa::search::Allow::ALL,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);

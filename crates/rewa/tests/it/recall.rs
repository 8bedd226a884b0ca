// Recall floors on seeded clustered data (held-out queries, ground truth from exact search),
// and the exactness guarantees of staged search.

use rewa::eval::recall_at_k;
use rewa::search::{brute_force, exact_search};
use rewa::testutil::clusters;
use rewa::{Index, IndexSpec, Metric, SearchParams, Vectors};

/// Copies of base and queries as the index sees them (normalised for cosine).
fn prepared(d: &Data, metric: Metric) -> (Vectors, Vectors) {
    let (mut b, mut q) = (d.base.clone(), d.queries.clone());
    if metric.normalizes() {
        b.normalize();
        q.normalize();
    }
    (b, q)
}

struct Data {
    base: Vectors,
    queries: Vectors,
}

fn data(dim: usize) -> Data {
    // 100 classes x 50, noise 0.1 per coordinate: clusters with real within-class structure.
    let (base, _, queries, _) = clusters(100, 50, dim, 0.1, 11);
    Data { base, queries }
}

fn recall(d: &Data, metric: Metric, pipeline: &str, k: usize) -> f64 {
    let spec = IndexSpec {
        metric,
        pipeline: pipeline.parse().unwrap(),
        seed: 3,
    };
    let index = Index::build(&spec, d.base.view()).unwrap();
    let got = index
        .search_batch(
            d.queries.view(),
            &SearchParams {
                filter: None,
                k,
                pipeline: None,
            },
        )
        .unwrap();
    let (b, q) = prepared(d, metric);
    let truth = exact_search(b.view(), q.view(), metric, k);
    let r = recall_at_k(&got, &truth, k);
    eprintln!("{pipeline} {metric}: recall@{k} = {r:.3}");
    if let (Some(g), Some(t)) = (got.first(), truth.first()) {
        eprintln!(
            "  query 0 returned {:?}\n  true {:?}",
            g.iter().map(|h| h.id).collect::<Vec<_>>(),
            t.iter().map(|h| h.id).collect::<Vec<_>>()
        );
    }
    r
}

/// (pipeline, metric, dim, floor). Floors sit about 0.03 below the value observed when they
/// were set (noted after each row: observed on seed 11 / 3).
const CASES: &[(&str, Metric, usize, f64)] = &[
    ("flat:10", Metric::Cosine, 64, 0.999),            // 1.000
    ("exact:10", Metric::L2, 128, 0.999),              // 1.000
    ("hadamard64:10", Metric::Cosine, 64, 0.97),       // 1.000
    ("hadamard32:10", Metric::Cosine, 64, 0.28),       // 0.313
    ("pca32:10", Metric::Cosine, 64, 0.35),            // 0.381
    ("pca32:10", Metric::L2, 128, 0.39),               // 0.422
    ("int8:10", Metric::Cosine, 64, 0.91),             // 0.943
    ("int8:10", Metric::L2, 128, 0.95),                // 0.982
    ("hadamard128+int8:10", Metric::Ip, 128, 0.94),    // 0.970
    ("hadamard256+sign:10", Metric::Cosine, 64, 0.42), // 0.452
    ("hadamard128+sign:10", Metric::L2, 128, 0.32),    // 0.357
    ("hadamard256+sign:200,exact:10", Metric::Cosine, 64, 0.97), // 1.000
    ("pq16:10", Metric::Cosine, 64, 0.33),             // 0.362
    ("pq16:10", Metric::L2, 128, 0.34),                // 0.375
    ("opq16+pq16:10", Metric::L2, 128, 0.36),          // 0.389
    ("pq16:50,exact:10", Metric::Ip, 128, 0.97),       // 1.000
    (
        "hadamard256+sign:500,int8:50,exact:10",
        Metric::L2,
        128,
        0.97,
    ), // 1.000
];

#[test]
fn recall_floors() {
    let d64 = data(64);
    let d128 = data(128);
    let mut failures = Vec::new();
    for &(p, metric, dim, floor) in CASES {
        let d = if dim == 64 { &d64 } else { &d128 };
        let r = recall(d, metric, p, 10);
        if r < floor {
            failures.push(format!(
                "{p} {metric} d={dim}: recall {r:.3} < floor {floor}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn exact_last_stage_with_keep_n_equals_brute_force() {
    let d = data(64);
    let n = d.base.len();
    for metric in [Metric::Cosine, Metric::L2] {
        let p = format!("hadamard64+sign:{n},exact:10");
        let spec = IndexSpec {
            metric,
            pipeline: p.parse().unwrap(),
            seed: 1,
        };
        let index = Index::build(&spec, d.base.view()).unwrap();
        let got = index
            .search_batch(
                d.queries.view(),
                &SearchParams {
                    filter: None,
                    k: 10,
                    pipeline: None,
                },
            )
            .unwrap();
        let (b, q) = prepared(&d, metric);
        let want = brute_force(b.view(), q.view(), metric, 10);
        assert_eq!(got, want, "{metric}: ids and distances must be identical");
    }
}

#[test]
fn sign_codes_on_pm1_data_keep_exact_order() {
    // For +-1 vectors, |x - q|^2 = 4 * hamming(x, q): sign codes (no transform, threshold 0 is
    // the mean of symmetric data only approximately, so use data whose mean is exactly 0).
    let dim = 64;
    let mut rows = Vec::new();
    for i in 0..512u64 {
        let bits = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let r: Vec<f32> = (0..dim)
            .map(|b| if (bits >> b) & 1 == 1 { 1.0 } else { -1.0 })
            .collect();
        rows.extend(r.iter().copied());
        rows.extend(r.iter().map(|v| -v)); // mirrored rows make every dimension's mean 0
    }
    let base = Vectors::new(dim, rows).unwrap();
    let queries = base.gather(&[0, 7, 300, 1001]);
    let spec = IndexSpec {
        metric: Metric::L2,
        pipeline: "sign:10".parse().unwrap(),
        seed: 0,
    };
    let index = Index::build(&spec, base.view()).unwrap();
    let got = index
        .search_batch(
            queries.view(),
            &SearchParams {
                filter: None,
                k: 10,
                pipeline: None,
            },
        )
        .unwrap();
    let want = brute_force(base.view(), queries.view(), Metric::L2, 10);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            g.iter().map(|h| h.id).collect::<Vec<_>>(),
            w.iter().map(|h| h.id).collect::<Vec<_>>()
        );
        for (a, b) in g.iter().zip(w) {
            assert_eq!(4.0 * a.distance, b.distance);
        }
    }
}

#[test]
fn encoders_over_odd_dims() {
    for dim in [1usize, 7, 8, 9, 63, 64, 65, 127, 768] {
        let base = rewa::testutil::gaussian(300, dim, dim as u64);
        let p = format!(
            "hadamard{dim}+sign:100,pq{q}:70,hadamard{dim}+int8:50,pca{}:20,exact:5",
            dim.min(8),
            q = dim.min(4)
        );
        let spec = IndexSpec {
            metric: Metric::L2,
            pipeline: p.parse().unwrap(),
            seed: 0,
        };
        let index = Index::build(&spec, base.view()).unwrap();
        let hits = index
            .search(
                base.row(3),
                &SearchParams {
                    filter: None,
                    k: 5,
                    pipeline: None,
                },
            )
            .unwrap();
        assert_eq!(hits.len(), 5, "dim {dim}");
        assert_eq!(hits[0].id, 3, "dim {dim}: a base vector finds itself first");
    }
}

/// One query over a large base splits the base between threads; the result must equal the
/// serial scan's (ids and distances), which a batch of many queries still uses.
#[test]
fn single_query_sharded_scans_equal_batch_scans() {
    use rewa::search::{exact_search, scan_sign};
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let base = rewa::testutil::gaussian(70_000, 16, 3);
    let queries = rewa::testutil::gaussian(8, 16, 4);
    // sign codes: 8 bytes of pseudo-random bits per row, with many equal distances (ties)
    let codes: Vec<u8> = base
        .as_slice()
        .chunks_exact(16)
        .flat_map(|r| {
            let bits: u64 = r
                .iter()
                .enumerate()
                .fold(0, |acc, (i, v)| acc | (((*v > 0.0) as u64) << (i * 4)));
            bits.to_le_bytes()
        })
        .collect();
    let qcodes: Vec<Vec<u8>> = (0..8).map(|i| codes[i * 8..i * 8 + 8].to_vec()).collect();
    pool.install(|| {
        let batch = scan_sign(&qcodes, &codes, 8, 50, rewa::search::Allow::ALL);
        let batch_exact = exact_search(base.view(), queries.view(), Metric::L2, 20);
        for i in 0..8 {
            assert_eq!(
                scan_sign(&qcodes[i..i + 1], &codes, 8, 50, rewa::search::Allow::ALL)[0],
                batch[i],
                "sign query {i}"
            );
            let one = exact_search(base.view(), queries.view().slice(i, i + 1), Metric::L2, 20);
            assert_eq!(one[0], batch_exact[i], "exact query {i}");
        }
    });
    // the table and int8 scans shard the same way
    for spec in ["int8", "pq4", "hadamard16+asign"] {
        let enc = rewa::Encoder::fit(&spec.parse().unwrap(), base.view(), Metric::L2, 1).unwrap();
        let codes = enc.encode_batch(base.view()).unwrap();
        pool.install(|| {
            let batch = rewa::search::scan_encoded(
                &enc,
                &codes,
                queries.view(),
                30,
                rewa::search::Allow::ALL,
            );
            for i in 0..8 {
                let one = rewa::search::scan_encoded(
                    &enc,
                    &codes,
                    queries.view().slice(i, i + 1),
                    30,
                    rewa::search::Allow::ALL,
                );
                assert_eq!(one[0], batch[i], "{spec} query {i}");
            }
        });
    }
}

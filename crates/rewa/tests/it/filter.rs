// Filtered search is a pre-filter: an exact pipeline returns exactly the top k of the allowed
// rows at every selectivity (fewer hits when fewer match, never a row outside the filter);
// staged pipelines keep their unfiltered recall; deletes and segments are respected.

use rewa::eval::recall_at_k;
use rewa::testutil::clusters;
use rewa::{Hit, Index, IndexSpec, Metric, RowFilter, SearchParams, Vectors};
use std::sync::Arc;

/// 4,000 rows in three segments, 37 of them deleted.
fn index(metric: Metric, pipeline: &str) -> (Index, Vectors, Vectors, Vec<u32>) {
    let (base, _, queries, _) = clusters(200, 20, 32, 0.4, 5);
    let spec = IndexSpec {
        metric,
        pipeline: pipeline.parse().unwrap(),
        seed: 1,
    };
    let mut i = Index::build(&spec, base.view().slice(0, 2500)).unwrap();
    i.add(base.view().slice(2500, 3300)).unwrap();
    i.add(base.view().slice(3300, 4000)).unwrap();
    let deleted: Vec<u32> = (0..37).map(|j| j * 97 + 3).collect();
    i.delete(&deleted).unwrap();
    (i, base, queries, deleted)
}

/// A seeded random set of about `frac` of `0..n`.
fn random_rows(n: u32, frac: f64, seed: u64) -> Vec<u32> {
    let mut next = rewa::testutil::xorshift(seed);
    (0..n)
        .filter(|_| (next() % 1_000_000) as f64 / 1e6 < frac)
        .collect()
}

fn search(i: &Index, q: &Vectors, p: &str, k: usize, f: Option<&[u32]>) -> Vec<Vec<Hit>> {
    i.search_batch(
        q.view(),
        &SearchParams {
            k,
            pipeline: Some(p.parse().unwrap()),
            filter: f.map(|ids| Arc::new(RowFilter::from_ids(ids.iter().copied()))),
        },
    )
    .unwrap()
}

/// The best k of `rows` (live) by the metric's distance, one row at a time.
fn brute(base: &Vectors, q: &[f32], metric: Metric, rows: &[u32], k: usize) -> Vec<Hit> {
    let prep = |v: &[f32]| -> Vec<f32> {
        let mut v = v.to_vec();
        if metric == Metric::Cosine {
            rewa::normalize(&mut v);
        }
        v
    };
    let q = prep(q);
    let mut all: Vec<Hit> = rows
        .iter()
        .map(|&id| Hit {
            id,
            distance: metric.distance(&q, &prep(base.row(id as usize))),
        })
        .collect();
    all.sort_unstable();
    all.truncate(k);
    all
}

/// `got` is the best k of `allowed`: same length, every id allowed, distances equal to the
/// brute-force ones position by position (ids may differ only between equal distances).
fn assert_top(got: &[Hit], want: &[Hit], allowed: &[u32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: hit count");
    for (g, w) in got.iter().zip(want) {
        assert!(
            allowed.binary_search(&g.id).is_ok(),
            "{what}: {} is not allowed",
            g.id
        );
        let tol = 1e-4 * w.distance.abs().max(1.0);
        assert!(
            (g.distance - w.distance).abs() <= tol,
            "{what}: {g:?} vs {w:?}"
        );
    }
}

#[test]
fn filtered_exact_search_is_brute_force_over_the_allowed_rows_at_every_selectivity() {
    for metric in [Metric::Cosine, Metric::L2] {
        let (i, base, queries, deleted) = index(metric, "hadamard64+sign:100,int8:60,exact:25");
        for (si, frac) in [0.0001, 0.001, 0.01, 0.1, 0.5, 1.0].into_iter().enumerate() {
            let mut rows = random_rows(4000, frac, si as u64 + 9);
            if rows.is_empty() {
                rows.push(1234);
            }
            // what the filter allows and is live
            let live: Vec<u32> = rows
                .iter()
                .copied()
                .filter(|r| !deleted.contains(r))
                .collect();
            for (p, k) in [
                ("exact:25", 25),
                ("hadamard64+sign:100,exact:25", 25),
                ("int8:60,exact:25", 25),
            ] {
                let got = search(&i, &queries, p, k, Some(&rows));
                for (qi, g) in got.iter().enumerate() {
                    let want = brute(&base, queries.row(qi), metric, &live, k);
                    // staged pipelines are exact when the allowed rows are few (scored by
                    // the last stage alone); otherwise checked for recall below
                    if p.starts_with("exact") || live.len() <= 40 {
                        assert_top(g, &want, &live, &format!("{metric} {p} frac {frac}"));
                    } else {
                        assert_eq!(g.len(), k);
                        assert!(g.iter().all(|h| live.binary_search(&h.id).is_ok()));
                    }
                }
            }
        }
        // a few queries take the in-place path, a batch the gathered one: the same hits
        let rows = random_rows(4000, 0.05, 77);
        for p in [
            "hadamard64+sign:100,exact:25",
            "int8:60,exact:25",
            "hadamard64+sign:100,int8:60",
        ] {
            let k = 25.min(p.rsplit(':').next().unwrap().parse().unwrap());
            let batch = search(&i, &queries, p, k, Some(&rows));
            let few = Vectors::new(32, queries.as_slice()[..3 * 32].to_vec()).unwrap();
            // (the exact distances of a GEMM and of one dot product per row differ in the
            // last bits)
            for (a, b) in search(&i, &few, p, k, Some(&rows)).iter().zip(&batch) {
                assert_eq!(
                    a.iter().map(|h| h.id).collect::<Vec<_>>(),
                    b.iter().map(|h| h.id).collect::<Vec<_>>(),
                    "{p}"
                );
                assert!(
                    a.iter()
                        .zip(b)
                        .all(|(x, y)| (x.distance - y.distance).abs() < 1e-5),
                    "{p}"
                );
            }
        }
        // an empty filter, and one of deleted rows only: no hits
        for rows in [vec![], deleted.clone()] {
            let got = search(&i, &queries, "exact:10", 10, Some(&rows));
            assert!(got.iter().all(|h| h.is_empty()));
        }
        // ids past the last row are ignored
        let got = search(&i, &queries, "exact:10", 10, Some(&[5, 4_000_000]));
        assert!(got.iter().all(|h| h.len() == 1 && h[0].id == 5));
    }
}

/// Each staged pipeline's recall@10 against the filtered truth is at least its unfiltered
/// recall minus 0.02, at every selectivity: the filter acts inside the first stage's scan
/// (and widens a partitioned stage's probe), it does not cut a fixed candidate list.
#[test]
fn staged_filtered_recall_holds_at_every_selectivity() {
    let metric = Metric::Cosine;
    let pipelines = [
        "hadamard64+sign:60,exact:10",
        "pq8:40,exact:10",
        "pq16x4:40,exact:10",
        "rabitq1:60,exact:10",
        "rabitq1:bound,exact:10",
        "ivf32/4+pq16x4:60,exact:10",
        "ivf32r/4+rabitq2:60,exact:10",
        "ivf32/4+hadamard128+sign:80,exact:10",
        "ivf32/6+int8:40,exact:10",
    ];
    // 200 rows per class: a random tenth of the rows still holds each query's class (with
    // 20 per class it would not, and the filtered problem would be a different, harder one)
    let (base, _, queries, _) = clusters(20, 200, 32, 0.4, 5);
    for p in pipelines {
        // the index needs the pipeline's encoders: build it with that pipeline
        let spec = IndexSpec {
            metric,
            pipeline: p.parse().unwrap(),
            seed: 1,
        };
        let mut i = Index::build(&spec, base.view().slice(0, 3000)).unwrap();
        i.add(base.view().slice(3000, 4000)).unwrap();
        let all: Vec<u32> = (0..4000).collect();
        let truth = |rows: &[u32]| -> Vec<Vec<Hit>> {
            (0..queries.len())
                .map(|qi| brute(&base, queries.row(qi), metric, rows, 10))
                .collect()
        };
        let unfiltered = recall_at_k(&search(&i, &queries, p, 10, None), &truth(&all), 10);
        for (si, frac) in [0.001, 0.01, 0.1, 0.5].into_iter().enumerate() {
            let rows = random_rows(4000, frac, 100 + si as u64);
            let got = search(&i, &queries, p, 10, Some(&rows));
            for g in &got {
                assert!(g.iter().all(|h| rows.binary_search(&h.id).is_ok()), "{p}");
                assert_eq!(g.len(), rows.len().min(10), "{p} frac {frac}");
            }
            let r = recall_at_k(&got, &truth(&rows), 10);
            eprintln!("{p} frac {frac}: recall {r:.3} (unfiltered {unfiltered:.3})");
            assert!(
                r >= unfiltered - 0.02,
                "{p} frac {frac}: recall {r} vs unfiltered {unfiltered}"
            );
        }
    }
}

/// Every first-stage kernel offered a filter returns the best codes of the allowed rows by
/// its own distance: a full scan filtered equals one distance per allowed code, and so does
/// a partitioned scan probing every list (sign, fast-scan, RaBitQ, tables, int8).
#[test]
fn every_kernel_skips_the_rows_outside_the_filter() {
    let (base, _, queries, _) = clusters(100, 30, 32, 0.3, 8);
    let rows = random_rows(3000, 0.3, 4);
    let f = RowFilter::from_ids(rows.iter().copied());
    for (lists, full) in [
        ("ivf8/8+hadamard64+sign:40", "hadamard64+sign:40"),
        ("ivf8/8+hadamard128+sign:40", "hadamard128+sign:40"),
        ("ivf8/8+pq16x4:40", "pq16x4:40"),
        ("ivf8/8+hadamard64+asignfs:40", "hadamard64+asignfs:40"),
        ("ivf8/8+rabitq1:40", "rabitq1:40"),
        ("ivf8/8+rabitq4:40", "rabitq4:40"),
        ("ivf8/8+pq8:40", "pq8:40"),
        ("ivf8/8+int8:40", "int8:40"),
    ] {
        for metric in [Metric::Cosine, Metric::L2] {
            let spec = |p: &str| IndexSpec {
                metric,
                pipeline: p.parse().unwrap(),
                seed: 2,
            };
            let li = Index::build(&spec(lists), base.view()).unwrap();
            let fi = Index::build(&spec(full), base.view()).unwrap();
            // the reference: the unfiltered scan of every code by the same kernel, cut to the
            // allowed rows
            let every = format!("{}:3000", full.split(':').next().unwrap());
            let all = search(&fi, &queries, &every, 3000, None);
            let got_full = search(&fi, &queries, full, 40, Some(&rows));
            let got_lists = search(&li, &queries, lists, 40, Some(&rows));
            for qi in 0..queries.len() {
                let want: Vec<Hit> = all[qi]
                    .iter()
                    .copied()
                    .filter(|h| f.contains(h.id))
                    .take(40)
                    .collect();
                assert_eq!(got_full[qi], want, "{full} {metric}");
                assert!(got_lists[qi].iter().all(|h| f.contains(h.id)), "{lists}");
            }
            // every list probed: the same hits as the filtered full scan
            assert_eq!(got_lists, got_full, "{lists} {metric}");
        }
    }
}

/// After a compaction the deleted rows are gone from the segments: a filter naming them (and
/// rows never given out) still returns exactly the best of the live allowed rows, by either
/// path (few rows scored by the last stage, or the first stage's scan).
#[test]
fn a_filter_naming_compacted_rows_skips_them() {
    let (mut i, base, queries, deleted) = index(Metric::L2, "hadamard64+sign:100,exact:25");
    i.compact();
    for rows in [
        deleted
            .iter()
            .copied()
            .chain([5, 6, 7, 9_999])
            .collect::<Vec<u32>>(),
        (0..3000).collect(),
    ] {
        let live: Vec<u32> = rows
            .iter()
            .copied()
            .filter(|r| *r < 4000 && !deleted.contains(r))
            .collect();
        let got = search(
            &i,
            &queries,
            "hadamard64+sign:4000,exact:25",
            25,
            Some(&rows),
        );
        for (qi, g) in got.iter().enumerate() {
            let want = brute(&base, queries.row(qi), Metric::L2, &live, 25);
            assert_top(g, &want, &live, "after compaction");
        }
    }
}

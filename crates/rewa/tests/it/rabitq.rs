// RaBitQ codes in an index: more bits keep more of the exact ranking; a `:bound` first stage
// hands the exact rerank the neighbours (recall of the exact search) with far fewer
// candidates than the base holds, in one segment or several, after deletes, flat or
// partitioned; the codes survive save/open byte for byte; misplaced bounds are refused;
// score-aware pq codes (pq<m>s<eta>) are assigned the same way after save, open and add.

use rewa::eval::{ground_truth, recall_at_k};
use rewa::testutil::clusters;
use rewa::{Index, IndexSpec, Metric, Pipeline, SearchParams, Vectors};

fn data() -> (Vectors, Vectors) {
    let (base, _, queries, _) = clusters(60, 50, 64, 0.3, 31);
    (base, queries)
}

fn build(metric: Metric, p: &str, base: &Vectors) -> Index {
    let spec = IndexSpec {
        metric,
        pipeline: p.parse().unwrap(),
        seed: 5,
    };
    Index::build(&spec, base.view()).unwrap()
}

fn counted(i: &Index, q: &Vectors, p: &str) -> (Vec<Vec<rewa::Hit>>, Vec<usize>) {
    let metric = i.metric();
    i.search_counted(
        &metric.prepare(q.view()).unwrap(),
        &SearchParams {
            filter: None,
            k: 10,
            pipeline: Some(p.parse().unwrap()),
        },
    )
    .unwrap()
}

fn truth(metric: Metric, base: &Vectors, q: &Vectors) -> Vec<Vec<rewa::Hit>> {
    ground_truth(
        &metric.prepare(base.view()).unwrap(),
        &metric.prepare(q.view()).unwrap(),
        10,
    )
}

#[test]
fn more_bits_rank_closer_to_exact() {
    let (base, queries) = data();
    for metric in [Metric::Cosine, Metric::L2] {
        let gt = truth(metric, &base, &queries);
        let mut last = 0.0;
        for bits in [1, 2, 4, 8] {
            let p = format!("rabitq{bits}:10");
            let (hits, _) = counted(&build(metric, &p, &base), &queries, &p);
            let r = recall_at_k(&hits, &gt, 10);
            assert!(r > last, "{metric} rabitq{bits}: {r} after {last}");
            last = r;
        }
        assert!(last > 0.97, "{metric}: rabitq8 recall {last}");
    }
}

#[test]
fn a_bound_stage_hands_the_rerank_the_neighbours_with_few_candidates() {
    let (base, queries) = data();
    let n = base.len();
    for metric in [Metric::Cosine, Metric::L2] {
        let gt = truth(metric, &base, &queries);
        let p = "rabitq2:bound=3,exact:10";
        let index = build(metric, p, &base);
        let (hits, counts) = counted(&index, &queries, p);
        let per_query = counts[0] as f64 / queries.len() as f64;
        let r = recall_at_k(&hits, &gt, 10);
        assert!(r >= 0.995, "{metric}: recall {r}");
        assert!(
            per_query < n as f64 / 5.0,
            "{metric}: {per_query} candidates per query"
        );
        // a larger constant keeps more; the default keeps fewer
        let (_, wide) = counted(&index, &queries, "rabitq2:bound=5,exact:10");
        let (_, narrow) = counted(&index, &queries, "rabitq2:bound,exact:10");
        assert!(
            wide[0] > counts[0] && counts[0] > narrow[0],
            "{wide:?} {counts:?} {narrow:?}"
        );
        // in three segments, and partitioned with every list probed: the same hits
        // (each segment's candidates are cut by its own k-th upper bound: a superset)
        let t = tempfile::tempdir().unwrap();
        let spec = IndexSpec {
            metric,
            pipeline: p.parse().unwrap(),
            seed: 5,
        };
        let mut seg = Index::fit(&spec, base.view()).unwrap();
        seg.add(base.view().slice(0, 2500)).unwrap();
        seg.save(t.path()).unwrap();
        let mut seg = Index::open(t.path()).unwrap();
        seg.add(base.view().slice(2500, n)).unwrap();
        assert_eq!(seg.segments().len(), 2);
        let (sh, sc) = counted(&seg, &queries, p);
        assert!(sc[0] >= counts[0], "{metric}: {sc:?} vs {counts:?}");
        assert!(recall_at_k(&sh, &gt, 10) >= r, "{metric}: segmented");
        let ivf = build(metric, "ivf8/8+rabitq2:bound=3,exact:10", &base);
        let got = counted(&ivf, &queries, "ivf8/8+rabitq2:bound=3,exact:10").0;
        assert!(recall_at_k(&got, &gt, 10) >= 0.995, "{metric}: partitioned");
        // deleted ids never come back, and the rest are still found
        let mut del = build(metric, p, &base);
        let gone: Vec<u32> = gt.iter().map(|h| h[0].id).collect();
        del.delete(&gone).unwrap();
        let after = counted(&del, &queries, p).0;
        assert!(after.iter().flatten().all(|h| !gone.contains(&h.id)));
    }
}

#[test]
fn rabitq_codes_survive_save_and_open() {
    let (base, queries) = data();
    for p in [
        "rabitq1:bound,exact:10",
        "ivf8r/4+pca32+rabitq4:40,exact:10",
    ] {
        let index = build(Metric::Cosine, p, &base);
        let t = tempfile::tempdir().unwrap();
        index.save(t.path()).unwrap();
        let opened = Index::open(t.path()).unwrap();
        assert_eq!(
            opened.segments()[0].codes(0),
            index.segments()[0].codes(0),
            "{p}"
        );
        assert_eq!(
            counted(&opened, &queries, p),
            counted(&index, &queries, p),
            "{p}"
        );
    }
}

#[test]
fn misplaced_bounds_are_refused() {
    for (p, msg) in [
        (
            "hadamard64+sign:bound,exact:10",
            "only a first stage of rabitq",
        ),
        ("rabitq1:bound", "followed by a rerank"),
        (
            "flat:100,rabitq1:bound,exact:10",
            "only a first stage of rabitq",
        ),
        ("rabitq1:bound=0,exact:10", "confidence constant"),
        ("rabitq1:bound=x,exact:10", "confidence constant"),
        ("rabitq9:10", "from 1 to 8"),
        ("rabitq:10", "from 1 to 8"),
    ] {
        let e = p.parse::<Pipeline>().unwrap_err().to_string();
        assert!(e.contains(msg), "{p}: {e}");
    }
    // the text form round-trips
    for p in ["rabitq1:bound,exact:10", "pca64+rabitq4:bound=3.5,exact:10"] {
        assert_eq!(p.parse::<Pipeline>().unwrap().to_string(), p);
    }
}

#[test]
fn score_aware_pq_codes_survive_save_open_and_add() {
    // pq<m>s<eta> keeps eta in its spec: an add after open assigns codes as the build did
    let (base, queries) = data();
    let p = "opq16+pq16s4:40,exact:10";
    let spec = IndexSpec {
        metric: Metric::Cosine,
        pipeline: p.parse().unwrap(),
        seed: 5,
    };
    // fitted once (an OPQ fit is most of this test's time): one copy takes every row at once
    let mut part = Index::fit(&spec, base.view()).unwrap();
    let mut full = part.clone();
    full.add(base.view()).unwrap();
    let t = tempfile::tempdir().unwrap();
    part.add(base.view().slice(0, 2000)).unwrap();
    part.save(t.path()).unwrap();
    let mut opened = Index::open(t.path()).unwrap();
    opened.add(base.view().slice(2000, base.len())).unwrap();
    let all: Vec<u8> = opened
        .segments()
        .iter()
        .flat_map(|s| s.codes(0).to_vec())
        .collect();
    assert_eq!(all, full.segments()[0].codes(0), "codes after open + add");
    assert_eq!(
        counted(&opened, &queries, p).0,
        counted(&full, &queries, p).0
    );
    // and they are not plain pq16's codes
    let plain = build(Metric::Cosine, "opq16+pq16:40,exact:10", &base);
    assert_ne!(plain.segments()[0].codes(0), full.segments()[0].codes(0));
}

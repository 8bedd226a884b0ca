// The partitioned first stage: probing every list returns what a full scan of the same codes
// returns; recall rises with the lists probed; lists survive save/open and adds byte for byte;
// a damaged lists file is refused.

use rewa::eval::{ground_truth, recall_at_k};
use rewa::testutil::clusters;
use rewa::{Error, Index, IndexSpec, Metric, Pipeline, SearchParams, Vectors};

fn data() -> (Vectors, Vectors) {
    let (base, _, queries, _) = clusters(40, 50, 32, 0.3, 21);
    (base, queries)
}

fn spec(metric: Metric, p: &str) -> IndexSpec {
    IndexSpec {
        metric,
        pipeline: p.parse().unwrap(),
        seed: 3,
    }
}

fn run(i: &Index, q: &Vectors, p: &str, k: usize) -> Vec<Vec<rewa::Hit>> {
    i.search_batch(
        q.view(),
        &SearchParams {
            filter: None,
            k,
            pipeline: Some(p.parse().unwrap()),
        },
    )
    .unwrap()
}

#[test]
fn probing_every_list_equals_the_full_scan() {
    let (base, queries) = data();
    for metric in [Metric::Cosine, Metric::L2] {
        // sign codes: integer distances, ties by id, so the hits must be identical
        let index = Index::build(&spec(metric, "ivf16/4+hadamard64+sign:50"), base.view()).unwrap();
        let full = Index::build(&spec(metric, "hadamard64+sign:50"), base.view()).unwrap();
        assert_eq!(
            run(&index, &queries, "ivf16/16+hadamard64+sign:50", 50),
            run(&full, &queries, "hadamard64+sign:50", 50),
            "{metric}"
        );
        // every list kernel (blocked: fast-scan, Hamming, RaBitQ fast scan; one distance per
        // code: the rest): the same hits as the full scan's kernel
        for (lists, all) in [
            ("ivf16/4+pq16x4:50", "pq16x4:50"),
            ("ivf16/4+hadamard64+asignfs:50", "hadamard64+asignfs:50"),
            ("ivf16/4+hadamard128+sign:50", "hadamard128+sign:50"),
            ("ivf16/4+hadamard192+sign:50", "hadamard192+sign:50"),
            ("ivf16/4+rabitq1:50", "rabitq1:50"),
            ("ivf16/4+rabitq2:50", "rabitq2:50"),
            ("ivf16/4+rabitq4:50", "rabitq4:50"),
            ("ivf16/4+pq8:50", "pq8:50"),
            ("ivf16/4+int8:50", "int8:50"),
            ("ivf16/4+hadamard64+asign:50", "hadamard64+asign:50"),
        ] {
            let index = Index::build(&spec(metric, lists), base.view()).unwrap();
            let full = Index::build(&spec(metric, all), base.view()).unwrap();
            let every = lists.replace("/4+", "/16+");
            assert_eq!(
                run(&index, &queries, &every, 50),
                run(&full, &queries, all, 50),
                "{metric} {lists}"
            );
        }
        // with an exact rerank of every list's vectors: the exact neighbours
        let flat = Index::build(&spec(metric, "ivf16/16+flat:100,exact:10"), base.view()).unwrap();
        let truth = ground_truth(
            &metric.prepare(base.view()).unwrap(),
            &metric.prepare(queries.view()).unwrap(),
            10,
        );
        let got = run(&flat, &queries, "ivf16/16+flat:100,exact:10", 10);
        let ids = |h: &[Vec<rewa::Hit>]| -> Vec<Vec<u32>> {
            h.iter().map(|r| r.iter().map(|h| h.id).collect()).collect()
        };
        assert_eq!(ids(&got), ids(&truth), "{metric}");
    }
}

#[test]
fn recall_rises_with_the_lists_probed() {
    // unclustered data, where the partition cuts through neighbourhoods
    let base = rewa::testutil::gaussian(3000, 16, 1);
    let queries = rewa::testutil::gaussian(200, 16, 2);
    let metric = Metric::Cosine;
    let index = Index::build(&spec(metric, "ivf32/4+flat:10"), base.view()).unwrap();
    let truth = ground_truth(
        &metric.prepare(base.view()).unwrap(),
        &metric.prepare(queries.view()).unwrap(),
        10,
    );
    let r: Vec<f64> = [1, 4, 32]
        .iter()
        .map(|np| {
            recall_at_k(
                &run(&index, &queries, &format!("ivf32/{np}+flat:10"), 10),
                &truth,
                10,
            )
        })
        .collect();
    // measured 0.3075 / 0.656 / 1.0 (3,000 Gaussian 16-d into 32 lists): floors 0.03 below
    assert!(r[0] > 0.27 && r[0] < r[1] && r[1] < r[2], "{r:?}");
    assert!(r[1] > 0.62, "{r:?}");
    assert!(r[2] > 0.999, "{r:?}");
    // no list is empty
    let lists = index.segments()[0].lists(0).unwrap();
    assert_eq!(lists.offsets.len(), 33);
    assert!(
        lists.offsets.windows(2).all(|w| w[1] > w[0]),
        "{:?}",
        lists.offsets
    );
}

#[test]
fn lists_round_trip_and_adds_equal_one_build() {
    let (base, queries) = data();
    let p = "ivf8/3+opq8+pq8:100,exact:10";
    let sp = spec(Metric::Cosine, p);
    let half = base.len() / 2;
    let first = base.view().slice(0, half);
    let rest = base.view().slice(half, base.len());
    // fit on the first half, add in two calls / in one call
    let mut two = Index::fit(&sp, first).unwrap();
    two.add(first).unwrap();
    two.add(rest).unwrap();
    let mut one = Index::fit(&sp, first).unwrap();
    one.add(base.view()).unwrap();
    assert_eq!(
        two.segments().len(),
        1,
        "adds before a save grow one segment"
    );
    let (a, b) = (&two.segments()[0], &one.segments()[0]);
    assert_eq!(a.codes(0), b.codes(0));
    assert_eq!(a.lists(0).unwrap().offsets, b.lists(0).unwrap().offsets);
    assert_eq!(a.lists(0).unwrap().ids, b.lists(0).unwrap().ids);
    let before = run(&two, &queries, p, 10);
    assert_eq!(before, run(&one, &queries, p, 10));
    // ids inside a list rise (adds go to the ends of their lists)
    let l = a.lists(0).unwrap();
    for w in l.offsets.windows(2) {
        let ids = &l.ids[w[0] as usize..w[1] as usize];
        assert!(ids.windows(2).all(|x| x[0] < x[1]));
    }
    let t = tempfile::tempdir().unwrap();
    two.save(t.path()).unwrap();
    let opened = Index::open(t.path()).unwrap();
    assert_eq!(opened.segments()[0].codes(0), a.codes(0));
    assert_eq!(opened.segments()[0].lists(0).unwrap().ids, l.ids);
    assert_eq!(run(&opened, &queries, p, 10), before);
    let manifest = std::fs::read_to_string(t.path().join("manifest.json")).unwrap();
    assert!(manifest.contains("\"format_version\": 3"), "{manifest}");
    assert!(manifest.contains("ivf8+opq8+pq8"), "{manifest}");
    assert!(
        manifest.contains("\"pipeline\": \"ivf8/3+opq8+pq8:100,exact:10\""),
        "{manifest}"
    );
}

#[test]
fn a_damaged_lists_file_is_refused() {
    let (base, _) = data();
    let t = tempfile::tempdir().unwrap();
    Index::build(&spec(Metric::L2, "ivf8/2+flat:10"), base.view())
        .unwrap()
        .save(t.path())
        .unwrap();
    let lists = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("seg0-lists-")
        })
        .unwrap();
    // list an id twice, and fix the checksum so that only the ids check can catch it
    let mut bytes = std::fs::read(&lists).unwrap();
    let n = bytes.len();
    let last = bytes[n - 4..].to_vec();
    bytes[n - 8..n - 4].copy_from_slice(&last);
    std::fs::write(&lists, &bytes).unwrap();
    let mpath = t.path().join("manifest.json");
    let m = std::fs::read_to_string(&mpath).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["segments"][0]["lists"][0]["crc32"] = crc32fast::hash(&bytes).into();
    std::fs::write(&mpath, serde_json::to_vec(&v).unwrap()).unwrap();
    match Index::open(t.path()) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("listed twice"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn partition_errors_name_the_fix() {
    let (base, _) = data();
    // more lists than training vectors
    let e = Index::build(&spec(Metric::L2, "ivf4096/8+flat:10"), base.view()).unwrap_err();
    assert!(
        e.to_string().contains("at least 4096 training vectors"),
        "{e}"
    );
    // a stage naming a partition the index does not have
    let index = Index::build(&spec(Metric::L2, "ivf8/2+flat:10"), base.view()).unwrap();
    let e = index
        .search_batch(
            base.view().slice(0, 1),
            &SearchParams {
                filter: None,
                k: 10,
                pipeline: Some("ivf16/2+flat:10".parse::<Pipeline>().unwrap()),
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("has no codes for ivf16+flat"), "{e}");
}

#[test]
fn tune_chooses_the_lists_probed() {
    let base = rewa::testutil::gaussian(3000, 16, 1);
    let val = rewa::testutil::gaussian(100, 16, 3);
    let metric = Metric::L2;
    let index = Index::build(&spec(metric, "ivf32/1+flat:40,exact:10"), base.view()).unwrap();
    let report = rewa::tune(
        &index,
        &metric.prepare(val.view()).unwrap(),
        &rewa::TuneOptions {
            target_recall: 0.9,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(report.target_met, "{report:?}");
    assert!(report.recall_at_k >= 0.9);
    let chosen = report.chosen();
    let np = chosen.nprobe().unwrap();
    // one list finds about a third (see above); all 32 are not needed
    assert!((2..32).contains(&np), "{chosen}");
    assert!(report
        .curve
        .iter()
        .any(|p| p.pipeline.starts_with("ivf32/1+")));
}

/// With a confidence bound, tune picks a setting whose recall's lower bound on the tuning
/// queries meets the target, at least as much work as the mean alone asks for, and the
/// target holds on queries it never saw.
#[test]
fn tune_with_confidence_holds_on_held_out_queries() {
    let base = rewa::testutil::gaussian(3000, 16, 1);
    let val = rewa::testutil::gaussian(100, 16, 3);
    let held_out = rewa::testutil::gaussian(400, 16, 4);
    let metric = Metric::L2;
    let index = Index::build(&spec(metric, "ivf32/1+flat:40,exact:10"), base.view()).unwrap();
    let tune = |confidence: f64| {
        rewa::tune(
            &index,
            &metric.prepare(val.view()).unwrap(),
            &rewa::TuneOptions {
                target_recall: 0.9,
                confidence,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap()
    };
    let (plain, sure) = (tune(0.0), tune(0.95));
    assert!(plain.target_met && sure.target_met);
    assert_eq!(plain.recall_lower, plain.recall_at_k);
    assert!(
        sure.recall_lower >= 0.9 && sure.recall_lower < sure.recall_at_k,
        "{sure:?}"
    );
    assert!(sure.curve.iter().all(|p| p.recall_lower <= p.recall_at_k));
    let np = |r: &rewa::TuneReport| r.chosen().nprobe().unwrap();
    assert!(
        np(&sure) >= np(&plain),
        "{} vs {}",
        sure.pipeline,
        plain.pipeline
    );
    let q = metric.prepare(held_out.view()).unwrap();
    let truth = ground_truth(&metric.prepare(base.view()).unwrap(), &q, 10);
    let recall = |r: &rewa::TuneReport| {
        let hits = index
            .search_prepared(
                &q,
                &rewa::SearchParams {
                    filter: None,
                    k: 10,
                    pipeline: Some(r.chosen().clone()),
                },
            )
            .unwrap();
        recall_at_k(&hits, &truth, 10)
    };
    let (rp, rs) = (recall(&plain), recall(&sure));
    eprintln!(
        "held out: mean-tuned {} {rp:.4}, confidence-tuned {} {rs:.4}",
        plain.pipeline, sure.pipeline
    );
    assert!(rs >= 0.9, "{rs}");
    // refused outside [0, 1)
    for bad in [1.0, -0.1, f64::NAN] {
        let e = rewa::tune(
            &index,
            &metric.prepare(val.view()).unwrap(),
            &rewa::TuneOptions {
                confidence: bad,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("confidence must be in [0, 1)"),
            "{e}"
        );
    }
}

#[test]
fn residual_lists_score_the_full_inner_product() {
    let base = rewa::testutil::gaussian(3000, 24, 5);
    let queries = rewa::testutil::gaussian(50, 24, 6);
    let metric = Metric::Ip;
    let truth = ground_truth(
        &metric.prepare(base.view()).unwrap(),
        &metric.prepare(queries.view()).unwrap(),
        10,
    );
    let ids = |h: &[Vec<rewa::Hit>]| -> Vec<Vec<u32>> {
        h.iter().map(|r| r.iter().map(|h| h.id).collect()).collect()
    };
    // flat residual codes, every list probed: -q.c - q.r is -q.x, so the exact neighbours
    let flat = Index::build(&spec(metric, "ivf16r/16+flat:10"), base.view()).unwrap();
    let got = run(&flat, &queries, "ivf16r/16+flat:10", 10);
    assert_eq!(ids(&got), ids(&truth));
    for (g, t) in got.iter().flatten().zip(truth.iter().flatten()) {
        assert!((g.distance - t.distance).abs() < 1e-4, "{g:?} vs {t:?}");
    }
    // pq on residuals keeps more than pq on the vectors, at the same bytes (no rerank)
    let (cb, _, cq, _) = clusters(60, 50, 32, 0.3, 8);
    let ct = ground_truth(
        &metric.prepare(cb.view()).unwrap(),
        &metric.prepare(cq.view()).unwrap(),
        10,
    );
    let recall = |p: &str| {
        let i = Index::build(&spec(metric, p), cb.view()).unwrap();
        recall_at_k(&run(&i, &cq, p, 10), &ct, 10)
    };
    let (plain, res) = (recall("ivf32/8+pq4:10"), recall("ivf32r/8+pq4:10"));
    // measured 0.402 / 0.435 (3,000 clustered 32-d vectors at noise 0.3, 32 lists, 8 probed)
    assert!(
        res > plain + 0.01 && res > 0.40,
        "plain {plain}, residual {res}"
    );
    // residuals need an inner-product metric
    let e = Index::build(&spec(Metric::L2, "ivf16r/4+flat:10"), base.view()).unwrap_err();
    assert!(
        e.to_string()
            .contains("residual lists score inner products"),
        "{e}"
    );
}

/// Recall@10 of `p` on `q` against exact search over `base`.
fn held_out_recall(index: &Index, base: &Vectors, q: &Vectors, p: &Pipeline) -> f64 {
    let m = index.metric();
    let q = m.prepare(q.view()).unwrap();
    let truth = ground_truth(&m.prepare(base.view()).unwrap(), &q, 10);
    let hits = index
        .search_prepared(
            &q,
            &SearchParams {
                filter: None,
                k: 10,
                pipeline: Some(p.clone()),
            },
        )
        .unwrap();
    recall_at_k(&hits, &truth, 10)
}

/// `ivf128/8+flat:10` stores no float vectors, but its codes are the vectors: it tunes (its
/// nprobe alone, no keep being left) against a scan of every list, and the setting holds on
/// queries it never saw.
#[test]
fn tune_takes_ground_truth_from_flat_codes() {
    let base = rewa::testutil::gaussian(3000, 16, 1);
    let val = rewa::testutil::gaussian(200, 16, 3);
    let held_out = rewa::testutil::gaussian(400, 16, 4);
    for metric in [Metric::L2, Metric::Cosine] {
        let index = Index::build(&spec(metric, "ivf128/8+flat:10"), base.view()).unwrap();
        assert!(!index.has_vectors());
        let report = rewa::tune(
            &index,
            &metric.prepare(val.view()).unwrap(),
            &rewa::TuneOptions {
                target_recall: 0.9,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
        assert!(report.target_met, "{report:?}");
        let np = report.chosen().nprobe().unwrap();
        assert!((2..128).contains(&np), "{}", report.pipeline);
        assert_eq!(report.pipeline, format!("ivf128/{np}+flat:10"));
        // every list probed is exact search (the ground truth tune took)
        let all: Pipeline = "ivf128/128+flat:10".parse().unwrap();
        assert_eq!(held_out_recall(&index, &base, &held_out, &all), 1.0);
        let r = held_out_recall(&index, &base, &held_out, report.chosen());
        eprintln!("{metric}: {} held-out recall {r:.4}", report.pipeline);
        assert!(r >= 0.9, "{metric}: {r}");
    }
}

/// An index with neither float vectors nor flat codes tunes against the base vectors given
/// (deleted rows left out); without them the error says to give them.
#[test]
fn tune_takes_ground_truth_from_the_base_when_the_index_has_none() {
    let base = rewa::testutil::gaussian(3000, 16, 1);
    let val = rewa::testutil::gaussian(200, 16, 3);
    let held_out = rewa::testutil::gaussian(400, 16, 4);
    let metric = Metric::L2;
    let mut index = Index::build(&spec(metric, "ivf32/1+int8:40,int8:10"), base.view()).unwrap();
    let q = metric.prepare(val.view()).unwrap();
    let opts = rewa::TuneOptions {
        target_recall: 0.85,
        ..Default::default()
    };
    let e = rewa::tune(&index, &q, &opts, &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert!(
        e.to_string().contains(
            "stores neither float vectors nor flat codes: give the vectors it was built from (--base FILE; base= in Python)"
        ),
        "{e}"
    );
    let b = metric.prepare(base.view()).unwrap();
    let data = rewa::tune::TuneData {
        queries: &q,
        base: Some(&b),
    };
    let report = rewa::tune::tune_on(&index, data, &opts, &mut |_| {}).unwrap();
    assert!(report.target_met, "{report:?}");
    assert!(report.pipeline.starts_with("ivf32/"), "{}", report.pipeline);
    let r = held_out_recall(&index, &base, &held_out, report.chosen());
    assert!(r >= 0.85, "{} held-out recall {r}", report.pipeline);
    // a base that is not the index's rows is refused
    let short = metric.prepare(base.view().slice(0, 2999)).unwrap();
    let e = rewa::tune::tune_on(
        &index,
        rewa::tune::TuneData {
            queries: &q,
            base: Some(&short),
        },
        &opts,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the base holds 2999 vectors, but the index gave out ids 0..3000"),
        "{e}"
    );
    // deleted rows are no ground truth: with the exact neighbours deleted, the truth is the
    // nearest live rows (which a full-probe, full-keep search finds)
    let gone: Vec<u32> = (0..3000).step_by(2).collect();
    index.delete(&gone).unwrap();
    let report = rewa::tune::tune_on(&index, data, &opts, &mut |_| {}).unwrap();
    assert!(report.target_met, "{report:?}");
    assert!(report.curve.iter().all(|p| p.recall_at_k > 0.0));
}

//! Training behaviour on small seeded data: the loss falls, held-out recall beats a random
//! Hadamard projection of the same size, candle and the core crate compute the same outputs,
//! saved models give bit-identical codes, and bad input gets a clear error.
//!
//! Tests that need the same trained model share one run ([`neighbours_run`]), trained once.

use candle_core::Device;
use rand::SeedableRng;
use rewa::encode::{LearnedTransform, Transform};
use rewa::eval::recall_at_k;
use rewa::search::{exact_search, scan_encoded};
use rewa::{Encoder, EncoderSpec, Error, Metric, Vectors};
use rewa_train::{train, Mlp, Quiet, Supervision, TrainConfig, TrainOutcome};
use std::sync::OnceLock;

/// 40 clusters in 64 dims whose members vary along 6 cluster-specific directions plus a
/// little isotropic noise: the neighbours of a vector are decided by a few directions per
/// cluster, which a learned 16-dim code can keep and a random projection only partly keeps.
fn data(seed: u64) -> (Vectors, Vectors) {
    use rand_distr::{Distribution, StandardNormal};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (d, c, per, q_per, rank) = (64, 40, 60, 5, 6);
    let mut g = |n: usize| -> Vec<f32> { (0..n).map(|_| StandardNormal.sample(&mut r)).collect() };
    let centers = g(c * d);
    let dirs = g(c * rank * d);
    let mut base = Vec::new();
    let mut queries = Vec::new();
    for k in 0..c {
        for i in 0..per + q_per {
            let u = g(rank);
            let e = g(d);
            let v: Vec<f32> = (0..d)
                .map(|j| {
                    let mut x = centers[k * d + j];
                    for (t, ut) in u.iter().enumerate() {
                        x += 0.6 * ut * dirs[(k * rank + t) * d + j];
                    }
                    x + 0.05 * e[j]
                })
                .collect();
            if i < per { &mut base } else { &mut queries }.extend(v);
        }
    }
    let mut b = Vectors::new(d, base).unwrap();
    let mut q = Vectors::new(d, queries).unwrap();
    b.normalize();
    q.normalize();
    (b, q)
}

/// Trains on `base` (cosine) without progress output.
fn run(base: &Vectors, sup: &Supervision, cfg: &TrainConfig) -> rewa_train::Result<TrainOutcome> {
    train(base.view(), sup, cfg, Metric::Cosine, &mut Quiet)
}

/// Largest difference between the candle forward pass of `mlp` and `model.apply_batch` on `x`.
fn candle_vs_core(mlp: &Mlp, model: &LearnedTransform, x: &Vectors) -> f32 {
    let dev = Device::Cpu;
    let xt = candle_core::Tensor::from_slice(x.as_slice(), (x.len(), x.dim()), &dev).unwrap();
    let a: Vec<Vec<f32>> = mlp.forward(&xt, None).unwrap().to_vec2().unwrap();
    let core = model.apply_batch(x.view());
    let mut worst = 0f32;
    for (i, row) in a.iter().enumerate() {
        for (u, v) in row.iter().zip(core.row(i)) {
            worst = worst.max((u - v).abs());
        }
    }
    worst
}

fn small_config() -> TrainConfig {
    TrainConfig {
        dim: 16,
        epochs: 25,
        batch: 128,
        lr: 5e-3,
        patience: 25,
        eval_queries: 200,
        seed: 7,
        ..Default::default()
    }
}

/// The self-supervised run on `data(1)` with [`small_config`]: base, queries and outcome.
/// Trained once and shared by the tests that need exactly this run.
fn neighbours_run() -> &'static (Vectors, Vectors, TrainOutcome) {
    static RUN: OnceLock<(Vectors, Vectors, TrainOutcome)> = OnceLock::new();
    RUN.get_or_init(|| {
        let (base, queries) = data(1);
        let out = run(&base, &Supervision::Neighbours, &small_config()).unwrap();
        (base, queries, out)
    })
}

fn recall_of(enc: &Encoder, base: &Vectors, queries: &Vectors) -> f64 {
    let truth = exact_search(base.view(), queries.view(), Metric::Cosine, 10);
    let codes = enc.encode_batch(base.view()).unwrap();
    let res = scan_encoded(enc, &codes, queries.view(), 10, rewa::search::Allow::ALL);
    recall_at_k(&res, &truth, 10)
}

fn learned_encoder(t: LearnedTransform, spec: &str, base: &Vectors) -> Encoder {
    let q: EncoderSpec = spec.parse().unwrap();
    let out = t.apply_batch(base.view());
    let qz = Encoder::fit(&q, out.view(), Metric::Ip, 1).unwrap();
    Encoder::from_parts(
        format!("learned=mem+{spec}").parse().unwrap(),
        base.dim(),
        None,
        vec![t.into()],
        qz.quantizer().clone(),
    )
    .unwrap()
}

#[test]
fn loss_falls_and_held_out_recall_beats_hadamard() {
    let (base, queries, out) = neighbours_run();
    let first = out.log.first().unwrap().train_loss;
    let last = out.log.last().unwrap().train_loss;
    let learned = recall_of(
        &learned_encoder(out.model.clone(), "flat", base),
        base,
        queries,
    );
    let had = Encoder::fit(
        &"hadamard16".parse().unwrap(),
        base.view(),
        Metric::Cosine,
        7,
    )
    .unwrap();
    let hadamard = recall_of(&had, base, queries);
    eprintln!(
        "loss {first:.3} -> {last:.3}; held-out recall@10 learned {learned:.3}, hadamard16 {hadamard:.3}; {:.1}s",
        out.seconds
    );
    assert!(last <= 0.5 * first, "loss {first} -> {last}");
    assert!(
        learned > hadamard + 0.05,
        "learned {learned} vs hadamard {hadamard}"
    );
    assert!(out
        .log
        .iter()
        .all(|e| e.val_recall.is_finite() && e.train_recall.is_finite()));
}

#[test]
fn candle_and_core_forward_passes_agree() {
    let dev = Device::Cpu;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mlp = Mlp::new(48, 40, 12, 1e-5, &mut rng, &dev).unwrap();
    let x = rewa::testutil::gaussian(300, 48, 9);
    let worst = candle_vs_core(&mlp, &mlp.export().unwrap(), &x);
    assert!(worst < 1e-5, "max difference {worst}");
    // and the same after training moved the weights away from their initial values
    let (base, _, out) = neighbours_run();
    let mlp = Mlp::from_transform(&out.model, &dev).unwrap();
    let worst = candle_vs_core(&mlp, &out.model, base);
    assert!(worst < 1e-5, "after training: max difference {worst}");
}

#[test]
fn seeded_runs_repeat_and_saved_models_give_identical_codes() {
    let (base, _) = data(4);
    let cfg = TrainConfig {
        epochs: 3,
        ..small_config()
    };
    let a = run(&base, &Supervision::Neighbours, &cfg).unwrap();
    let b = run(&base, &Supervision::Neighbours, &cfg).unwrap();
    for (x, y) in a.model.tensors().iter().zip(b.model.tensors()) {
        assert_eq!(x.2, y.2, "{} differs between two runs with one seed", x.0);
    }
    // augmentation draws from the same seeded stream: repeatable, and it changes the run
    let aug = TrainConfig {
        augment: 0.05,
        ..cfg.clone()
    };
    let c = run(&base, &Supervision::Neighbours, &aug).unwrap();
    let d = run(&base, &Supervision::Neighbours, &aug).unwrap();
    for ((x, y), z) in c
        .model
        .tensors()
        .iter()
        .zip(d.model.tensors())
        .zip(a.model.tensors())
    {
        assert_eq!(x.2, y.2, "{} differs between two augmented runs", x.0);
        assert_ne!(x.2, z.2, "{}: augmentation changed nothing", x.0);
    }
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("m");
    a.model.save(&mdir, serde_json::Value::Null).unwrap();
    for q in ["sign", "int8", "flat"] {
        let spec: EncoderSpec = format!("learned={}+{q}", mdir.display()).parse().unwrap();
        let loaded = Encoder::fit(&spec, base.view(), Metric::Cosine, 5).unwrap();
        let mem = learned_encoder(a.model.clone(), q, &base);
        assert_eq!(
            loaded.encode_batch(base.view()).unwrap(),
            mem.encode_batch(base.view()).unwrap(),
            "{q} codes differ after save -> load"
        );
    }
    // an index built with the learned encoder saves, opens and searches identically
    let spec = rewa::IndexSpec {
        metric: Metric::Cosine,
        pipeline: format!("learned={}+sign:50,exact:10", mdir.display())
            .parse()
            .unwrap(),
        seed: 1,
    };
    let index = rewa::Index::build(&spec, base.view()).unwrap();
    let idir = dir.path().join("index");
    index.save(&idir).unwrap();
    std::fs::remove_dir_all(&mdir).unwrap(); // the index carries the weights itself
    let opened = rewa::Index::open(&idir).unwrap();
    let p = rewa::SearchParams::default();
    for i in [0, 17, 99] {
        assert_eq!(
            index.search(base.row(i), &p).unwrap(),
            opened.search(base.row(i), &p).unwrap()
        );
    }
}

#[test]
fn labels_and_pairs_train_and_quantization_aware_training_runs() {
    let (base, queries) = data(5);
    let labels: Vec<i64> = (0..base.len()).map(|i| (i / 60) as i64).collect();
    // half held out, so each class has ~30 validation vectors and precision@10 can reach 1
    let cfg = TrainConfig {
        epochs: 10,
        val_fraction: 0.5,
        ..small_config()
    };
    let out = run(&base, &Supervision::Labels(labels), &cfg).unwrap();
    let lps: Vec<f64> = out
        .log
        .iter()
        .map(|e| e.val_label_precision.unwrap())
        .collect();
    eprintln!("val label precision by epoch {lps:?}");
    let lp = *lps.last().unwrap();
    assert!(lp > 0.85 && lp > lps[0] + 0.2, "label precision {lps:?}");
    // pairs: each query's positive is its exact nearest base vector
    let nn = exact_search(base.view(), queries.view(), Metric::Cosine, 1);
    let pairs: Vec<(u32, u32)> = nn
        .iter()
        .enumerate()
        .map(|(q, h)| (q as u32, h[0].id))
        .collect();
    let out = run(
        &base,
        &Supervision::Pairs {
            queries: queries.clone(),
            pairs,
        },
        &cfg,
    )
    .unwrap();
    let qr: Vec<f64> = out
        .log
        .iter()
        .map(|e| e.val_qrels_recall.unwrap())
        .collect();
    eprintln!("val qrels recall@10 by epoch {qr:?}");
    assert!(*qr.last().unwrap() > 0.5, "{qr:?}");
}

#[test]
fn quantization_aware_training_keeps_more_recall_in_sign_codes() {
    let (base, queries, plain) = neighbours_run();
    let cfg = TrainConfig {
        qat: Some(rewa_train::Qat::Sign),
        ..small_config()
    };
    let qat = run(base, &Supervision::Neighbours, &cfg).unwrap();
    assert!(qat.log.iter().all(|e| e.val_recall_quantized.is_some()));
    let sign = |m: LearnedTransform| recall_of(&learned_encoder(m, "sign", base), base, queries);
    let (p, q) = (sign(plain.model.clone()), sign(qat.model));
    eprintln!("held-out recall@10 of sign codes: plain {p:.3}, qat {q:.3}");
    assert!(q > p + 0.02, "plain {p} vs qat {q}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let (base, _) = data(6);
    let cfg = small_config();
    let e = run(&base, &Supervision::Labels(vec![0; 5]), &cfg)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("5 labels for 2400 base vectors"),
        "{e}"
    );
    let big = TrainConfig {
        dim: 65,
        ..cfg.clone()
    };
    let e = run(&base, &Supervision::Neighbours, &big).err().unwrap();
    assert!(e.to_string().contains("input dimension 64"), "{e}");
    let negative = TrainConfig {
        distill: Some(-1.0),
        ..cfg.clone()
    };
    let e = run(&base, &Supervision::Neighbours, &negative)
        .err()
        .unwrap();
    assert!(e.to_string().contains("--distill"), "{e}");
    for a in [-0.1, f32::NAN] {
        let bad_augment = TrainConfig {
            augment: a,
            ..cfg.clone()
        };
        let e = run(&base, &Supervision::Neighbours, &bad_augment)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--augment"), "{e}");
    }
    let mut nan = base.clone();
    nan.as_mut_slice()[70] = f32::NAN;
    let e = run(&nan, &Supervision::Neighbours, &cfg).err().unwrap();
    assert!(
        matches!(e, rewa_train::Error::Rewa(Error::InvalidInput(_))),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing: EncoderSpec = format!("learned={}+sign", dir.path().join("nope").display())
        .parse()
        .unwrap();
    let e = Encoder::fit(&missing, base.view(), Metric::Cosine, 0).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("no such model"),
        "{e}"
    );

    // any model trained on 64-dim data
    let model = &neighbours_run().2.model;
    model.save(dir.path(), serde_json::Value::Null).unwrap();
    let spec: EncoderSpec = format!("learned={}", dir.path().display()).parse().unwrap();
    let other = rewa::testutil::gaussian(10, 32, 1);
    let e = Encoder::fit(&spec, other.view(), Metric::Cosine, 0).unwrap_err();
    assert!(
        e.to_string()
            .contains("trained for dimension 64, the data has dimension 32"),
        "{e}"
    );
    let w = dir.path().join(rewa::encode::WEIGHTS_FILE);
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 100);
    std::fs::write(&w, &bytes).unwrap();
    let e = Encoder::fit(&spec, base.view(), Metric::Cosine, 0).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
}

#[test]
fn pca_init_starts_as_pca_and_never_ends_below_its_start() {
    let (base, queries) = data(4);
    // the network at its PCA start: L2-normalised, mean-removed PCA projection
    let pca = rewa::encode::PcaTransform::fit(&rewa::encode::PcaConfig { m: 16 }, base.view(), 0)
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mlp = Mlp::new(64, 40, 16, 1e-5, &mut rng, &Device::Cpu).unwrap();
    mlp.init_from_projection(pca.components()).unwrap();
    let out = mlp.export().unwrap().apply_batch(queries.view());
    let mut worst = 0f32;
    for (i, q) in queries.view().rows().enumerate() {
        let mut p: Vec<f32> = pca
            .components()
            .chunks_exact(64)
            .map(|c| c.iter().zip(q).map(|(a, b)| a * b).sum())
            .collect();
        let mean = p.iter().sum::<f32>() / 16.0;
        p.iter_mut().for_each(|v| *v -= mean);
        rewa::normalize(&mut p);
        for (a, b) in p.iter().zip(out.row(i)) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(
        worst < 1e-3,
        "start differs from the PCA projection by {worst}"
    );
    // hidden < 2 * dim cannot hold the projection
    let small = Mlp::new(64, 20, 16, 1e-5, &mut rng, &Device::Cpu).unwrap();
    assert!(small.init_from_projection(pca.components()).is_err());
    // training logs the start as epoch 0 and keeps the best epoch, the start included
    let cfg = TrainConfig {
        init: rewa_train::Init::Pca,
        epochs: 5,
        ..small_config()
    };
    let out = run(&base, &Supervision::Neighbours, &cfg).unwrap();
    assert_eq!(out.log[0].epoch, 0);
    assert!(out.log[0].train_loss.is_nan());
    let best = out.log.iter().find(|e| e.epoch == out.best_epoch).unwrap();
    assert!(out.log.iter().all(|e| e.score <= best.score + 1e-4));
    assert!(best.score >= out.log[0].score);
    let err = run(
        &base,
        &Supervision::Neighbours,
        &TrainConfig {
            hidden: Some(20),
            ..cfg
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--init pca needs --hidden"), "{err}");
}

#[test]
fn every_setting_is_checked_before_training_and_names_its_flag() {
    let (base, _) = data(6);
    let cfg = small_config();
    let cases: Vec<(TrainConfig, &str)> = vec![
        (
            TrainConfig {
                hidden: Some(0),
                ..cfg.clone()
            },
            "--hidden",
        ),
        (
            TrainConfig {
                hidden: Some(usize::MAX),
                ..cfg.clone()
            },
            "--hidden",
        ),
        (
            TrainConfig {
                batch: usize::MAX,
                ..cfg.clone()
            },
            "--batch",
        ),
        (
            TrainConfig {
                group: 1 << 63,
                ..cfg.clone()
            },
            "--group",
        ),
        (
            TrainConfig {
                group: usize::MAX,
                ..cfg.clone()
            },
            "--group",
        ),
        (
            TrainConfig {
                epochs: usize::MAX,
                ..cfg.clone()
            },
            "--epochs",
        ),
        (
            TrainConfig {
                weight_decay: f64::NAN,
                ..cfg.clone()
            },
            "--weight-decay",
        ),
        (
            TrainConfig {
                lr: f64::INFINITY,
                ..cfg.clone()
            },
            "--lr",
        ),
        (
            TrainConfig {
                temperature: 0.0,
                ..cfg.clone()
            },
            "--temperature",
        ),
        (
            TrainConfig {
                input_noise: f32::INFINITY,
                ..cfg.clone()
            },
            "--input-noise",
        ),
        (
            TrainConfig {
                dropout: 1.0,
                ..cfg.clone()
            },
            "--dropout",
        ),
        // 2400 x 0.001 = 2 validation vectors, too few to measure recall@10
        (
            TrainConfig {
                val_fraction: 0.001,
                ..cfg.clone()
            },
            "--val-fraction",
        ),
        (
            TrainConfig {
                val_fraction: 0.0,
                ..cfg.clone()
            },
            "--val-fraction",
        ),
    ];
    for (c, flag) in cases {
        let e = rewa_train::validate(base.view(), &Supervision::Neighbours, &c).unwrap_err();
        assert!(
            matches!(&e, rewa_train::Error::Rewa(Error::InvalidInput(m)) if m.contains(flag)),
            "{flag}: {e}"
        );
        // train runs the same checks
        let e = run(&base, &Supervision::Neighbours, &c).err().unwrap();
        assert!(e.to_string().contains(flag), "{flag}: {e}");
    }
    // pairs: a single judged query leaves no validation query
    let one = Supervision::Pairs {
        queries: base.clone(),
        pairs: vec![(0, 1), (0, 2)],
    };
    let e = rewa_train::validate(base.view(), &one, &cfg).unwrap_err();
    assert!(e.to_string().contains("--val-fraction"), "{e}");
    assert!(rewa_train::validate(base.view(), &Supervision::Neighbours, &cfg).is_ok());
}

#[test]
fn asymmetric_training_keeps_more_recall_in_asign_and_rabitq_codes() {
    let (base, queries) = data(1);
    let c32 = TrainConfig {
        dim: 32,
        ..small_config()
    };
    let plain = run(&base, &Supervision::Neighbours, &c32).unwrap();
    let (base, queries) = (&base, &queries);
    for (qat, spec, margin) in [
        (rewa_train::Qat::Asign, "asign", 0.02),
        (rewa_train::Qat::Rabitq { bits: 1 }, "rabitq1", 0.02),
    ] {
        let cfg = TrainConfig {
            qat: Some(qat),
            ..c32.clone()
        };
        let out = run(base, &Supervision::Neighbours, &cfg).unwrap();
        assert!(out.log.iter().all(|e| e.val_recall_quantized.is_some()));
        let p = recall_of(
            &learned_encoder(plain.model.clone(), spec, base),
            base,
            queries,
        );
        let enc = match out.quantizer {
            // rabitq keeps the quantizer it was trained with
            Some((s, q)) => {
                assert_eq!(s.to_string(), spec);
                Encoder::from_parts(
                    format!("learned=mem+{spec}").parse().unwrap(),
                    base.dim(),
                    None,
                    vec![out.model.clone().into()],
                    q,
                )
                .unwrap()
            }
            None => learned_encoder(out.model.clone(), spec, base),
        };
        let q = recall_of(&enc, base, queries);
        eprintln!("held-out recall@10 of {spec} codes: plain {p:.3}, trained for them {q:.3}");
        assert!(q > p + margin, "{spec}: plain {p} vs qat {q}");
    }
}

#[test]
fn pq_training_keeps_its_codebooks_which_learned_dir_plus_pq_uses() {
    let (base, queries) = data(1);
    let cfg = TrainConfig {
        qat: Some("pq8".parse().unwrap()),
        init: rewa_train::Init::Pca,
        lr: 1e-3,
        ..small_config()
    };
    let out = run(&base, &Supervision::Neighbours, &cfg).unwrap();
    let (spec, q) = out
        .quantizer
        .as_ref()
        .expect("pq runs keep their codebooks");
    assert_eq!(spec.to_string(), "pq8");
    let t = tempfile::tempdir().unwrap();
    out.model
        .save_with(t.path(), serde_json::json!({}), Some((*spec, q)))
        .unwrap();
    let cfgfile = std::fs::read_to_string(t.path().join("config.json")).unwrap();
    assert!(cfgfile.contains("\"quantizer\": \"pq8\""), "{cfgfile}");
    let enc = |s: &str| {
        let spec: EncoderSpec = format!("learned={}+{s}", t.path().display())
            .parse()
            .unwrap();
        Encoder::fit(&spec, base.view(), Metric::Cosine, 3).unwrap()
    };
    // learned=DIR+pq8 takes the trained codebooks, byte for byte; another pq is fitted
    let rewa::encode::AnyQuantizer::Pq(kept) = q else {
        panic!("a pq quantizer")
    };
    let rewa::encode::AnyQuantizer::Pq(loaded) = enc("pq8").quantizer().clone() else {
        panic!()
    };
    assert_eq!(loaded.centroids(), kept.centroids());
    let rewa::encode::AnyQuantizer::Pq(other) = enc("pq4").quantizer().clone() else {
        panic!()
    };
    assert_eq!(other.centroids().len(), kept.centroids().len());
    assert_ne!(other.centroids(), kept.centroids());
    let r = recall_of(&enc("pq8"), &base, &queries);
    eprintln!("held-out recall@10, learned 16 dims + trained pq8: {r:.3}");
    assert!(r > 0.5, "{r}");
}

#[test]
fn qat_takes_one_quantizer_token() {
    for ok in ["sign", "asign", "int8", "rabitq1", "rabitq8", "pq16"] {
        assert_eq!(ok.parse::<rewa_train::Qat>().unwrap().to_string(), ok);
    }
    for bad in [
        "opq32+pq32",
        "pq32x4",
        "flat",
        "asignfs",
        "hadamard64+sign",
        "rabitq9",
    ] {
        let e = bad.parse::<rewa_train::Qat>().unwrap_err();
        assert!(e.contains("one quantizer token"), "{bad}: {e}");
    }
}

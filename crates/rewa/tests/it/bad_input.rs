// Every bad input gets its own error variant, never a panic.

use rewa::io::{read_fvecs, read_vectors, write_fvecs, write_npy_f32};
use rewa::{EncoderSpec, Error, Index, IndexSpec, Metric, Pipeline, SearchParams, Vectors};
use std::path::{Path, PathBuf};

fn npy(dir: &Path, name: &str, descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> PathBuf {
    let h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
        if fortran { "True" } else { "False" }
    );
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(payload);
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn invalid_mentions(r: rewa::Result<Vectors>, what: &str) {
    match r {
        Err(Error::InvalidInput(msg)) => {
            assert!(msg.contains(what), "message {msg:?} lacks {what:?}")
        }
        other => panic!("expected InvalidInput mentioning {what:?}, got {other:?}"),
    }
}

#[test]
fn npy_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Good: float32, float16 and float64 all load as f32.
    let good = npy(
        d,
        "good.npy",
        "<f4",
        false,
        "(2, 3)",
        &f32s(&[1., 2., 3., 4., 5., 6.]),
    );
    assert_eq!(
        read_vectors(&good).unwrap().as_slice(),
        &[1., 2., 3., 4., 5., 6.]
    );
    let f64p: Vec<u8> = [1.0f64, 2.5].iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(
        read_vectors(&npy(d, "f8.npy", "<f8", false, "(1, 2)", &f64p))
            .unwrap()
            .as_slice(),
        &[1.0, 2.5]
    );
    let f16p: Vec<u8> = [half::f16::from_f32(0.5), half::f16::from_f32(-2.0)]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(
        read_vectors(&npy(d, "f2.npy", "<f2", false, "(2, 1)", &f16p))
            .unwrap()
            .as_slice(),
        &[0.5, -2.0]
    );

    // NaN / inf name the row.
    invalid_mentions(
        read_vectors(&npy(
            d,
            "nan.npy",
            "<f4",
            false,
            "(2, 2)",
            &f32s(&[0., 1., f32::NAN, 1.]),
        )),
        "row 1",
    );
    invalid_mentions(
        read_vectors(&npy(
            d,
            "inf.npy",
            "<f4",
            false,
            "(2, 2)",
            &f32s(&[f32::INFINITY, 1., 0., 1.]),
        )),
        "row 0",
    );
    // Zero rows, wrong rank, Fortran order, unsupported dtype.
    invalid_mentions(
        read_vectors(&npy(d, "zero.npy", "<f4", false, "(0, 4)", &[])),
        "zero vectors",
    );
    invalid_mentions(
        read_vectors(&npy(
            d,
            "1d.npy",
            "<f4",
            false,
            "(4,)",
            &f32s(&[1., 2., 3., 4.]),
        )),
        "2-D",
    );
    invalid_mentions(
        read_vectors(&npy(
            d,
            "3d.npy",
            "<f4",
            false,
            "(1, 2, 2)",
            &f32s(&[1., 2., 3., 4.]),
        )),
        "2-D",
    );
    invalid_mentions(
        read_vectors(&npy(
            d,
            "fortran.npy",
            "<f4",
            true,
            "(2, 2)",
            &f32s(&[1., 2., 3., 4.]),
        )),
        "Fortran",
    );
    invalid_mentions(
        read_vectors(&npy(d, "c8.npy", "<c8", false, "(1, 1)", &[0; 8])),
        "dtype",
    );
    invalid_mentions(
        read_vectors(&npy(d, "be.npy", ">f4", false, "(1, 1)", &[0; 4])),
        "dtype",
    );
    invalid_mentions(
        read_vectors(&npy(d, "int.npy", "<i4", false, "(1, 1)", &[0; 4])),
        "float",
    );
    // Truncated payload, bad magic, truncated header: Corrupt with the path.
    let trunc = npy(
        d,
        "trunc.npy",
        "<f4",
        false,
        "(2, 3)",
        &f32s(&[1., 2., 3., 4., 5.]),
    );
    assert!(
        matches!(read_vectors(&trunc), Err(Error::Corrupt { path, reason }) if path == trunc && reason.contains("truncated"))
    );
    let magic = d.join("magic.npy");
    std::fs::write(&magic, b"NOTNUMPY at all").unwrap();
    assert!(matches!(read_vectors(&magic), Err(Error::Corrupt { .. })));
    let short = d.join("short.npy");
    std::fs::write(&short, b"\x93NUMPY\x01\x00\xff\x00{'descr'").unwrap();
    assert!(matches!(read_vectors(&short), Err(Error::Corrupt { .. })));
    // Missing file: Io with the path.
    let missing = d.join("missing.npy");
    assert!(matches!(read_vectors(&missing), Err(Error::Io { path, .. }) if path == missing));
    // Unknown extension.
    assert!(matches!(
        read_vectors(&d.join("x.csv")),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn npy_and_fvecs_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let v = rewa::testutil::gaussian(17, 9, 1);
    write_npy_f32(&t.path().join("a.npy"), &v).unwrap();
    assert_eq!(read_vectors(&t.path().join("a.npy")).unwrap(), v);
    write_fvecs(&t.path().join("a.fvecs"), &v).unwrap();
    assert_eq!(read_fvecs(&t.path().join("a.fvecs")).unwrap(), v);
    // Truncated fvecs names the last whole row.
    let bytes = std::fs::read(t.path().join("a.fvecs")).unwrap();
    std::fs::write(t.path().join("t.fvecs"), &bytes[..bytes.len() - 3]).unwrap();
    assert!(
        matches!(read_vectors(&t.path().join("t.fvecs")), Err(Error::Corrupt { reason, .. }) if reason.contains("row 16"))
    );
    // A record whose dimension differs from the first.
    let mut bad = bytes.clone();
    bad[40..44].copy_from_slice(&5i32.to_le_bytes()); // second record's dimension field
    std::fs::write(t.path().join("d.fvecs"), &bad).unwrap();
    assert!(
        matches!(read_vectors(&t.path().join("d.fvecs")), Err(Error::Corrupt { reason, .. }) if reason.contains("row 1"))
    );
}

#[test]
fn index_inputs() {
    let base = rewa::testutil::gaussian(100, 8, 0);
    let spec = IndexSpec {
        metric: Metric::Cosine,
        pipeline: "hadamard8+sign:20,exact:5".parse().unwrap(),
        seed: 0,
    };
    let index = Index::build(&spec, base.view()).unwrap();
    let p = SearchParams {
        filter: None,
        k: 5,
        pipeline: None,
    };
    // Wrong query dimension.
    assert!(matches!(
        index.search(&[0.0; 7], &p),
        Err(Error::DimMismatch {
            expected: 8,
            got: 7
        })
    ));
    // NaN in a query.
    let mut q = base.row(0).to_vec();
    q[3] = f32::NAN;
    assert!(matches!(index.search(&q, &p), Err(Error::InvalidInput(_))));
    // k = 0 and k above the last keep.
    assert!(matches!(
        index.search(
            base.row(0),
            &SearchParams {
                filter: None,
                k: 0,
                pipeline: None
            }
        ),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        index.search(
            base.row(0),
            &SearchParams {
                filter: None,
                k: 6,
                pipeline: None
            }
        ),
        Err(Error::InvalidInput(_))
    ));
    // A pipeline naming codes the index lacks.
    let other: Pipeline = "int8:5".parse().unwrap();
    assert!(matches!(
        index.search(
            base.row(0),
            &SearchParams {
                filter: None,
                k: 5,
                pipeline: Some(other)
            }
        ),
        Err(Error::InvalidInput(_))
    ));
    // Adding vectors of another dimension, or with NaN; building on nothing.
    assert!(matches!(
        index.clone().add(rewa::testutil::gaussian(3, 9, 0).view()),
        Err(Error::DimMismatch { .. })
    ));
    let nan = Vectors::new(8, vec![f32::NAN; 8]).unwrap();
    assert!(matches!(
        index.clone().add(nan.view()),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        Index::build(&spec, Vectors::empty(8).view()),
        Err(Error::InvalidInput(_))
    ));
    // PCA with more components than dimensions.
    let pca = IndexSpec {
        pipeline: "pca9:5".parse().unwrap(),
        ..spec.clone()
    };
    assert!(matches!(
        Index::build(&pca, base.view()),
        Err(Error::InvalidInput(_))
    ));
    // Malformed specs.
    assert!(matches!(
        "hadamard+sign".parse::<EncoderSpec>(),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        "sign:10,exact:20".parse::<Pipeline>(),
        Err(Error::InvalidInput(_))
    ));
}

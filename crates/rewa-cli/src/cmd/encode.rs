use crate::data::{load, load_train, log, same_dim};
use anyhow::{bail, Context, Result};
use rewa::encode::QuantizerSpec;
use rewa::{Encoder, EncoderSpec, Metric};
use std::path::{Path, PathBuf};

/// Fit an encoder (on --train, else on --base) and write codes as .npy: uint8 rows of
/// code_len bytes for sign/int8 (sign bits packed little-endian into u64 words), float32 rows
/// for continuous encoders.
#[derive(clap::Args)]
pub struct Args {
    /// Vectors to encode (.npy, .fvecs, .bvecs).
    #[arg(long)]
    base: PathBuf,
    /// Encoder spec, e.g. hadamard256+sign (a learned= path holding + , or : in double
    /// quotes: learned="models/a+b"+sign).
    #[arg(long)]
    encoder: EncoderSpec,
    /// Vectors to fit on (default: --base). Never the evaluation queries.
    #[arg(long)]
    train: Option<PathBuf>,
    /// Metric: cosine (normalises inputs), ip or l2.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// Output .npy for the codes of --base.
    #[arg(long)]
    out: PathBuf,
    /// More vectors to encode with the same fitted encoder (e.g. queries).
    #[arg(long, requires = "queries_out")]
    queries: Option<PathBuf>,
    /// Output .npy for the codes of --queries.
    #[arg(long, requires = "queries")]
    queries_out: Option<PathBuf>,
    /// Seed for the encoder's random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// The codes of `v`, as the .npy they are written as.
enum Codes {
    Float(rewa::Vectors),
    Bytes(Vec<u8>),
}

fn encode(enc: &Encoder, v: &rewa::Vectors) -> Result<Codes> {
    Ok(if enc.spec().quantizer == QuantizerSpec::Flat {
        Codes::Float(enc.transform_batch(v.view()))
    } else {
        Codes::Bytes(enc.encode_batch(v.view())?)
    })
}

fn write(enc: &Encoder, codes: &Codes, out: &Path) -> Result<()> {
    let rows = match codes {
        Codes::Float(t) => {
            rewa::io::write_npy_f32(out, t)?;
            t.len()
        }
        Codes::Bytes(b) => {
            let rows = b.len() / enc.code_len();
            rewa::io::write_npy_u8(out, rows, enc.code_len(), b)?;
            rows
        }
    };
    log(&format!(
        "wrote {rows} codes of {} bytes to {}",
        enc.code_len(),
        out.display()
    ));
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    // Every input and output is checked, and every code computed, before anything is
    // written: a bad --queries or --queries-out must not leave --out replaced.
    rewa::io::check_writable(&a.out).context("--out")?;
    if let Some(nlist) = a.encoder.ivf {
        bail!(
            "--encoder {}: ivf{nlist} partitions an index's codes into lists, which a codes file does not hold; use it in `rewa build --pipeline`, or drop it here",
            a.encoder
        );
    }
    if let Some(out) = &a.queries_out {
        rewa::io::check_writable(out).context("--queries-out")?;
    }
    let base = load(&a.base, a.metric)?;
    a.encoder
        .check(base.dim())
        .with_context(|| format!("--encoder {}", a.encoder))?;
    let queries = match (&a.queries, &a.queries_out) {
        (Some(q), Some(out)) => {
            if out == &a.out {
                bail!(
                    "--queries-out and --out are the same file {}",
                    out.display()
                );
            }
            let qv = load(q, a.metric)?;
            same_dim(&qv, q, base.dim(), &a.base)?;
            Some((qv, out))
        }
        _ => None,
    };
    let train = load_train(a.train.as_deref(), a.metric, &base, &a.base)?;
    let enc = Encoder::fit(
        &a.encoder,
        train.as_ref().unwrap_or(&base).view(),
        a.metric,
        a.seed,
    )
    .with_context(|| format!("fitting {}", a.encoder))?;
    let base_codes = encode(&enc, &base)?;
    let query_codes = match &queries {
        Some((qv, out)) => Some((encode(&enc, qv)?, *out)),
        None => None,
    };
    write(&enc, &base_codes, &a.out)?;
    if let Some((codes, out)) = &query_codes {
        write(&enc, codes, out)?;
    }
    Ok(())
}

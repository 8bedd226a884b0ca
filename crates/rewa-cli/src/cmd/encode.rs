use crate::data::{load, load_train, log, same_dim};
use anyhow::{Context, Result};
use rewa::encode::QuantizerSpec;
use rewa::{Encoder, EncoderSpec, Metric};
use std::path::PathBuf;

/// Fit an encoder (on --train, else on --base) and write codes as .npy: uint8 rows of
/// code_len bytes for sign/int8 (sign bits packed little-endian into u64 words), float32 rows
/// for continuous encoders.
#[derive(clap::Args)]
pub struct Args {
    /// Vectors to encode (.npy, .fvecs, .bvecs).
    #[arg(long)]
    base: PathBuf,
    /// Encoder spec, e.g. hadamard256+sign.
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
    #[arg(long)]
    queries_out: Option<PathBuf>,
    /// Seed for the encoder's random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn write(enc: &Encoder, v: &rewa::Vectors, out: &std::path::Path) -> Result<()> {
    if enc.spec().quantizer == QuantizerSpec::Flat {
        let t = enc.transform_batch(v.view());
        rewa::io::write_npy_f32(out, &t)?;
    } else {
        let codes = enc.encode_batch(v.view())?;
        rewa::io::write_npy_u8(out, v.len(), enc.code_len(), &codes)?;
    }
    log(&format!(
        "wrote {} codes of {} bytes to {}",
        v.len(),
        enc.code_len(),
        out.display()
    ));
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let base = load(&a.base, a.metric)?;
    a.encoder.check(base.dim())?;
    let train = load_train(a.train.as_deref(), a.metric, &base, &a.base)?;
    let enc = Encoder::fit(
        &a.encoder,
        train.as_ref().unwrap_or(&base).view(),
        a.metric,
        a.seed,
    )
    .with_context(|| format!("fitting {}", a.encoder))?;
    write(&enc, &base, &a.out)?;
    if let (Some(q), Some(out)) = (&a.queries, &a.queries_out) {
        let qv = load(q, a.metric)?;
        same_dim(&qv, q, base.dim(), &a.base)?;
        write(&enc, &qv, out)?;
    }
    Ok(())
}

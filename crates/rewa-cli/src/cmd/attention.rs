use crate::data::{log, progress_bar};
use anyhow::{bail, Context, Result};
use rewa_embed::attention::{cost, Cost};
use rewa_embed::{Attention, Embedder, TextField};
use std::path::PathBuf;

/// REWA attention inside the embedding models (`rewa embed --attention rewa:...`): fit key
/// projections on a model's own keys, or measure what attention costs.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Fit per-layer, per-head key projections (the principal directions of the keys full
    /// attention computes for these texts, each text's keys centred) for
    /// `--attention rewa:...,keys=FILE`. Fit on texts you will not evaluate on.
    Fit(FitArgs),
    /// Time one layer of full and of REWA attention (every head, one thread) on random
    /// texts of the given lengths, with multiply-add counts; the selection costs included.
    Cost(CostArgs),
}

#[derive(clap::Args)]
struct FitArgs {
    /// The model directory (as for `rewa embed`).
    #[arg(long)]
    model: PathBuf,
    /// Texts (.jsonl BEIR layout, .txt, .tsv), as for `rewa embed`.
    #[arg(long)]
    input: PathBuf,
    /// Take the text from this field instead of the BEIR title + text.
    #[arg(long)]
    field: Option<String>,
    /// Fit on the first N texts only.
    #[arg(long)]
    limit: Option<usize>,
    /// Word pieces per text (default: the model's max_seq_length).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Where the projections go (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CostArgs {
    /// The REWA attention to time against full attention (keys= is ignored: a fitted
    /// projection costs what a random one does).
    #[arg(long)]
    attention: String,
    /// Take heads and head dimension from this model directory.
    #[arg(long, conflicts_with_all = ["heads", "head_dim"])]
    model: Option<PathBuf>,
    /// Heads per layer (without --model).
    #[arg(long, default_value_t = 12)]
    heads: usize,
    /// Dimension per head (without --model).
    #[arg(long, default_value_t = 32)]
    head_dim: usize,
    /// Text lengths in word pieces, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,256,512,1024,2048")]
    lengths: Vec<usize>,
    /// Timed repetitions per length (the best is kept).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print one JSON object per length.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.action {
        Action::Fit(f) => fit(f),
        Action::Cost(c) => run_cost(c),
    }
}

fn fit(a: FitArgs) -> Result<()> {
    rewa::io::check_writable(&a.out).context("--out")?;
    let field = a.field.clone().map_or(TextField::Beir, TextField::Named);
    let mut texts = rewa_embed::read_texts(&a.input, &field)
        .with_context(|| format!("reading texts from {}", a.input.display()))?
        .texts;
    if let Some(n) = a.limit {
        if n == 0 {
            bail!("--limit 0 leaves no text to fit on");
        }
        texts.truncate(n);
    }
    if texts.is_empty() {
        bail!("{} holds no texts", a.input.display());
    }
    let mut embedder = Embedder::load(&a.model)
        .with_context(|| format!("loading the model {}", a.model.display()))?;
    if let Some(n) = a.max_seq_len {
        embedder.set_max_seq_len(n).context("--max-seq-len")?;
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let bar = progress_bar(refs.len() as u64, "keys");
    let t = std::time::Instant::now();
    let k = embedder
        .fit_key_projections(&refs, |n| bar.inc(n as u64))
        .context("fitting the key projections")?;
    bar.finish_and_clear();
    let seconds = t.elapsed().as_secs_f64();
    k.save(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    // the share of key variance the first 1/4 and 1/2 of the directions hold, averaged
    let d = k.shape.head_dim;
    let share = |m: usize| {
        let heads = k.variances.chunks_exact(d);
        let n = heads.len() as f64;
        heads
            .map(|v| {
                let total: f32 = v.iter().sum();
                f64::from(v[..m].iter().sum::<f32>() / total.max(f32::MIN_POSITIVE))
            })
            .sum::<f64>()
            / n
    };
    let summary = serde_json::json!({
        "texts": k.texts,
        "keys_per_head": k.keys,
        "layers": k.shape.layers,
        "heads": k.shape.heads,
        "head_dim": d,
        "variance_in_first_quarter": share(d.div_ceil(4)),
        "variance_in_first_half": share(d.div_ceil(2)),
        "seconds": seconds,
        "out": a.out,
    });
    if a.json {
        println!("{summary}");
    } else {
        log(&format!(
            "fitted {} layers x {} heads x {d} dims on {} keys per head from {} texts in {seconds:.1}s",
            k.shape.layers, k.shape.heads, k.keys, k.texts
        ));
        println!(
            "the first {} of {d} directions hold {:.1}% of the key variance, the first {} {:.1}% (mean over heads); wrote {}",
            d.div_ceil(4),
            100.0 * share(d.div_ceil(4)),
            d.div_ceil(2),
            100.0 * share(d.div_ceil(2)),
            a.out.display()
        );
    }
    Ok(())
}

fn run_cost(a: CostArgs) -> Result<()> {
    let att: Attention = a.attention.parse().context("--attention")?;
    let Attention::Rewa(cfg) = att else {
        bail!("--attention full has nothing to compare: give a rewa:... spec");
    };
    let (heads, head_dim) = match &a.model {
        Some(m) => {
            let e =
                Embedder::load(m).with_context(|| format!("loading the model {}", m.display()))?;
            let s = e
                .attention_shape()
                .context("this model runs on candle, not the native pass")?;
            (s.heads, s.head_dim)
        }
        None => (a.heads, a.head_dim),
    };
    if a.lengths.is_empty() || a.lengths.contains(&0) {
        bail!("--lengths must list lengths of at least 1");
    }
    let rows: Vec<Cost> = cost(&cfg, heads, head_dim, &a.lengths, a.reps)?;
    if a.json {
        for r in &rows {
            println!(
                "{}",
                serde_json::json!({"attention": cfg_string(&cfg), "heads": heads, "head_dim": head_dim, "cost": r})
            );
        }
        return Ok(());
    }
    println!(
        "one layer, {heads} heads x {head_dim} dims, one thread; {} vs full attention",
        cfg_string(&cfg)
    );
    println!(
        "{:>6} {:>11} {:>11} {:>7} {:>12} {:>12} {:>12} {:>7}",
        "len", "full ms", "rewa ms", "ratio", "full MACs", "rewa MACs", "rewa words", "kept"
    );
    for r in &rows {
        println!(
            "{:>6} {:>11.3} {:>11.3} {:>7.2} {:>12.3e} {:>12.3e} {:>12.3e} {:>7.1}",
            r.len,
            r.full_seconds * 1e3,
            r.rewa_seconds * 1e3,
            r.rewa_seconds / r.full_seconds,
            r.full_macs,
            r.rewa_macs,
            r.rewa_word_ops,
            r.kept
        );
    }
    Ok(())
}

fn cfg_string(cfg: &rewa_embed::RewaAttention) -> String {
    Attention::Rewa(rewa_embed::RewaAttention {
        keys: None,
        ..cfg.clone()
    })
    .to_string()
}

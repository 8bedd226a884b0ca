use crate::data::{log, progress_bar};
use anyhow::{Context, Result};
use rewa::synth::{write, SynthConfig};
use std::path::PathBuf;

/// Generate synthetic clustered unit vectors as in the seed experiment.
///
/// Writes to --out: base.npy + labels.npy (classes x per-class), queries_same.npy +
/// queries_same_labels.npy (held-out draws from the same classes), base_new.npy +
/// base_new_labels.npy and queries_new.npy + queries_new_labels.npy (classes never in base.npy),
/// and synth.json with the settings.
#[derive(clap::Args)]
pub struct Args {
    /// Number of classes in the base set.
    #[arg(long, default_value_t = 50)]
    classes: usize,
    /// Base vectors per class.
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// Per-coordinate noise standard deviation around the class centroid (centroids have norm 3).
    #[arg(long, default_value_t = 0.3)]
    noise: f32,
    /// Held-out queries per class.
    #[arg(long, default_value_t = 10)]
    queries_per_class: usize,
    /// Classes absent from the base set (their own base and queries; 0 to skip).
    #[arg(long, default_value_t = 10)]
    new_classes: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = SynthConfig {
        classes: a.classes,
        per_class: a.per_class,
        dim: a.dim,
        noise: a.noise,
        queries_per_class: a.queries_per_class,
        new_classes: a.new_classes,
        seed: a.seed,
    };
    let t = std::time::Instant::now();
    // written a group of classes at a time: sets larger than memory too, the same bytes
    let pb = std::cell::OnceCell::new();
    write(&cfg, &a.out, &mut |done, total| {
        pb.get_or_init(|| progress_bar(total, "writing"))
            .set_position(done);
    })
    .with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(pb) = pb.get() {
        pb.finish_and_clear();
    }
    log(&format!(
        "generated {} base vectors of dim {} in {:.1}s",
        a.classes * a.per_class,
        a.dim,
        t.elapsed().as_secs_f64()
    ));
    std::fs::write(
        a.out.join("synth.json"),
        serde_json::to_string_pretty(&cfg)?,
    )?;
    log(&format!("wrote {}", a.out.display()));
    Ok(())
}

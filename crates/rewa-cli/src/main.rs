//! `rewa`: compress embeddings into small codes and search them in stages.

mod cmd;
mod data;
mod text;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc keeps freed memory for reuse. With the system allocator, training (which frees and
/// allocates megabyte tensors thousands of times a second) spent a third of its time in page
/// faults and TLB shootdowns as glibc returned the heap top to the kernel and took it back.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Compress dense embeddings into small codes and search them in stages.
///
/// Encoders are named by spec strings: transforms then at most one quantizer, joined by '+':
/// flat | hadamard<m> | pca<m> | learned=DIR , then sign | asign | int8 | pq<m> (e.g.
/// hadamard256+sign, pca64+int8, hadamard384+pq32, learned=models/x+sign; quote a model path
/// holding '+', ',' or ':' as learned="models/a+b"+sign).
/// Pipelines are comma-separated stages SPEC:keep, e.g. hadamard512+sign:1000,int8:100,exact:10.
#[derive(Parser)]
#[command(name = "rewa", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the seeded synthetic clustered data set (base, held-out queries, new classes).
    Synth(cmd::synth::Args),
    /// Measure an encoder or pipeline: recall@k vs exact search on held-out queries, QPS, bytes.
    Eval(cmd::eval::Args),
    /// Fit an encoder and write the codes of a vector file as .npy.
    Encode(cmd::encode::Args),
    /// Print and save the comparison table on synthetic data, SciFact and SIFT-small.
    Bench(cmd::bench::Args),
    /// Build a persistent index from a vector file.
    Build(cmd::index::BuildArgs),
    /// Append vectors to an index.
    Add(cmd::index::AddArgs),
    /// Search an index.
    Search(cmd::index::SearchArgs),
    /// Delete vectors from an index by id (searches never return them; other ids stay).
    Delete(cmd::index::DeleteArgs),
    /// Rewrite an index's segments into one without its deleted rows.
    Compact(cmd::index::CompactArgs),
    /// Find the keeps that reach a target recall at the highest QPS; store them as the default.
    Tune(cmd::index::TuneArgs),
    /// Show an index's facts.
    Info(cmd::index::InfoArgs),
    /// Serve an index over HTTP (JSON): search, add, info, health, metrics.
    Serve(cmd::serve::Args),
    /// Train the learned encoder (MLP, contrastive) for `learned=DIR` specs.
    Train(cmd::train::Args),
    /// Embed texts (.jsonl, .txt, .tsv) with a sentence-transformers model directory into .npy.
    Embed(cmd::embed::Args),
    /// REWA attention in the embedding models: fit key projections, or time it against full
    /// attention.
    Attention(cmd::attention::Args),
}

/// `mi_option_purge_delay` in the mimalloc headers the allocator crate vendors (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_arena_eager_commit` in the same headers.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// The commands that search: they touch little memory, and mimalloc's default of committing
/// its arenas eagerly (with transparent huge pages: a 2 MiB page zeroed on first touch) held
/// 11 MB more than they used (SciFact sentences, `hadamard384+sign:150,int8:10`: anonymous RSS
/// 21.8 -> 10.6 MB) and cost time in page zeroing. The option only takes effect before the first
/// arena exists, which is before `main` (the runtime allocates), so it is set from a
/// constructor that sees the arguments (glibc passes them to `.init_array` functions).
const SEARCHING: [&[u8]; 3] = [b"search", b"serve", b"tune"];

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[link_section = ".init_array"]
static LAZY_COMMIT: extern "C" fn(i32, *const *const std::ffi::c_char) = lazy_commit;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn lazy_commit(argc: i32, argv: *const *const std::ffi::c_char) {
    if argc < 2 || argv.is_null() {
        return;
    }
    // SAFETY: glibc calls `.init_array` functions with main's argc and argv: argv[1] exists
    // (argc >= 2) and is a NUL-terminated string.
    let cmd = unsafe { std::ffi::CStr::from_ptr(*argv.add(1)) }.to_bytes();
    if SEARCHING.contains(&cmd) {
        // SAFETY: sets an option; no other thread exists yet.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Training runs its heavy kernels on rayon's pool. candle's own element-wise worker
    // spins while it waits and took a third of a core from them (about 1 s of 6 per epoch
    // on 2 cores); with one candle thread it never starts. `embed` runs candle's matmuls and
    // wants every core (MiniLM on 2 cores: 2,547 tokens/s with two candle threads, 2,032 with
    // one). Set after parsing, still before any thread exists.
    if matches!(cli.command, Command::Train(_)) && std::env::var_os("CANDLE_NUM_THREADS").is_none()
    {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // A search frees and allocates candidate lists chunk after chunk; mimalloc's default is
    // to return freed pages to the kernel after 10 ms and fault them back in (zeroed: with
    // transparent huge pages, 2 MiB at a time) on the next chunk: 17% of a SciFact cascade's
    // time. A searching process keeps them.
    if matches!(
        cli.command,
        Command::Search(_) | Command::Serve(_) | Command::Tune(_)
    ) {
        // SAFETY: sets an option before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    let res = match cli.command {
        Command::Synth(a) => cmd::synth::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Encode(a) => cmd::encode::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Build(a) => cmd::index::build(a),
        Command::Add(a) => cmd::index::add(a),
        Command::Search(a) => cmd::index::search(a),
        Command::Delete(a) => cmd::index::delete(a),
        Command::Compact(a) => cmd::index::compact(a),
        Command::Tune(a) => cmd::index::tune(a),
        Command::Info(a) => cmd::index::info(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Embed(a) => cmd::embed::run(a),
        Command::Attention(a) => cmd::attention::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", skipping a cause whose text the message so far
/// already ends with (an I/O error names its OS error and also carries it as its cause).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out += ": ";
        }
        out += &text;
    }
    out
}

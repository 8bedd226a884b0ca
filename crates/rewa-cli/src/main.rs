//! `rewa`: compress embeddings into small codes and search them in stages.

mod cmd;
mod data;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Compress dense embeddings into small codes and search them in stages.
///
/// Encoders are named by spec strings: transforms then at most one quantizer, joined by '+':
/// flat | hadamard<m> | pca<m> , then sign | int8 (e.g. hadamard256+sign, pca64+int8).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Synth(a) => cmd::synth::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Encode(a) => cmd::encode::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The CLI's integration tests, one binary (one link, one process start).

mod cli;
mod common;
mod crash;
mod docs;
mod embed;
mod faults;
mod front;
mod serve;
mod text;

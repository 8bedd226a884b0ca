//! The library's integration tests, one binary (one link, one process start).

mod bad_input;
mod doc_ids;
mod filter;
mod golden;
mod ivf;
mod lifecycle;
mod rabitq;
mod recall;
mod roundtrip;
mod segments;
mod stream;

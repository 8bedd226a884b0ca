//! The library's integration tests, one binary (one link, one process start).

mod bad_input;
mod golden;
mod recall;
mod roundtrip;

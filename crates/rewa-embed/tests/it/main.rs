//! Integration tests of rewa-embed (one test binary, as in the other crates).

mod attention;
mod fixtures;
mod limits;
mod parity;
mod tiny;

pub mod bench;
pub mod embed;
pub mod encode;
pub mod eval;
pub mod index;
pub mod serve;
pub mod synth;
pub mod train;

//! lbd
pub mod config;
pub mod engine;
pub mod maglev;
pub mod xdp;

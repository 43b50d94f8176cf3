//! lbd
pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod maglev;
pub mod net;
pub mod state;
pub mod xdp;

//! lbd
pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod net;
pub mod plane;
pub mod proxy;
pub mod state;
pub mod xdp;

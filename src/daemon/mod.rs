//! The daemon around the protocol front ends: listeners and connection caps, signals and
//! shutdown, the config file and reload.

pub mod config;
pub mod listener;
pub mod shutdown;

pub use shutdown::Shutdown;

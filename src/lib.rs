//! hexzd: a small synchronous daemon that serves Hexz snapshot archives (`.hxz`) over HTTP
//! byte ranges and NBD.
//!
//! Layers, bottom up (design.md §2): [`format`] is the pure archive format; [`store`] opens
//! snapshots and answers `read_at`; [`pack`] writes archives; the front ends and the daemon
//! build on `store` alone. [`cli`] and [`commands`] are the command line.

pub mod cli;
pub mod commands;
pub mod daemon;
pub mod format;
pub mod http;
pub mod kernel;
pub mod logging;
pub mod nbd;
pub mod pack;
pub mod proxy;
pub mod store;

//! hexzd: a small synchronous daemon that serves Hexz snapshot archives (`.hxz`) over HTTP
//! byte ranges and NBD.
//!
//! Layers, bottom up (design.md §2): [`format`](mod@format) is the pure archive format; [`store`] opens
//! snapshots and answers `read_at`; [`pack`] writes archives; [`serving`] holds what the front
//! ends share (the catalog, every name on the wire, connections, metrics); [`tls`] puts rustls
//! on their sockets; [`http`] and [`nbd`] are the front ends; [`daemon`] owns the lifecycle of `serve` on top of them. [`cli`] and
//! [`commands`] are the command line. Imports only ever point down this list.

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
pub mod serving;
pub mod store;
pub mod tls;

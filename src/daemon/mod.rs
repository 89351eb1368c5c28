//! The daemon around the protocol front ends: the snapshot catalog, listeners and connection
//! caps, signals, and (later) the config file, reload and systemd integration.

pub mod catalog;
pub mod conn;
pub mod metrics;

pub use catalog::{Catalog, CatalogHandle, NamedSnapshot};
pub use conn::Conn;
pub use metrics::{Metrics, ProtoMetrics};

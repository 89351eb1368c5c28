//! The daemon around the protocol front ends: the snapshot catalog, listeners and connection
//! caps, signals and shutdown, the config file and reload.

pub mod catalog;
pub mod config;
pub mod conn;
pub mod listener;
pub mod metrics;
pub mod shutdown;

pub use catalog::{Catalog, CatalogHandle, NamedSnapshot};
pub use conn::Conn;
pub use metrics::{Metrics, ProtoMetrics};
pub use shutdown::Shutdown;

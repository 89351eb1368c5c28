//! What the front ends share, below them (design.md §2): the snapshot catalog and every name
//! on the wire ([`names`]), the connection type, the process counters, and the [`Draining`]
//! flag of a graceful stop. `http/` and `nbd/` import from here (and from `store`), never
//! from `daemon/`, which sits above them and builds these pieces for them.

pub mod budget;
pub mod catalog;
pub mod conn;
pub mod draining;
pub mod metrics;
pub mod names;
pub mod ratelog;
pub mod watch;

pub use budget::{Budget, Buffer, Permit};
pub use catalog::{Catalog, CatalogError, CatalogHandle, NamedSnapshot};
pub use conn::{ClientId, Conn, WaitWritable, Wrote, is_disconnect, write_all_vectored};
pub use draining::Draining;
pub use metrics::{Metrics, ProtoMetrics, get};
pub use names::valid_name;
pub use ratelog::RateLog;

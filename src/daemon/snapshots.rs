//! Opening the configured snapshots into a [`Catalog`], at start-up and on every reload, and
//! the one-line summary of what is served.

use std::sync::Arc;

use super::DaemonError;
use super::config::SnapshotConfig;
use crate::serving::{Catalog, NamedSnapshot};
use crate::store::{Engine, OpenOptions, Snapshot};

/// Opens every snapshot (in order; the first failure is the error) and builds the catalog.
/// The default is the snapshot marked `default`, else the first. Opening never blocks on a
/// FIFO (store::file), so a reload that names one fails at once.
pub fn open_catalog(
    snapshots: &[SnapshotConfig],
    engine: &Arc<Engine>,
) -> Result<Catalog, DaemonError> {
    open_catalog_with(snapshots, engine, |_, _| {})
}

/// [`open_catalog`], calling `before_each(i, snapshot)` before opening each one (start-up
/// uses it to extend systemd's start timeout while a slow set opens).
pub fn open_catalog_with(
    snapshots: &[SnapshotConfig],
    engine: &Arc<Engine>,
    mut before_each: impl FnMut(usize, &SnapshotConfig),
) -> Result<Catalog, DaemonError> {
    let mut entries = Vec::with_capacity(snapshots.len());
    for (i, s) in snapshots.iter().enumerate() {
        before_each(i, s);
        let options = OpenOptions {
            password: s.password.as_ref().map(|p| p.expose().to_vec()),
            index_only: false,
        };
        entries.push(NamedSnapshot {
            name: s.name.clone(),
            snapshot: Snapshot::open_with(&s.path, engine, &options)?,
        });
    }
    let default = snapshots
        .iter()
        .find(|s| s.default)
        .map(|s| s.name.as_str());
    Ok(Catalog::new(entries, default)?)
}

/// What is served, for the log: `serving 2 snapshot(s): a (default), b`.
pub fn describe(catalog: &Catalog) -> String {
    if catalog.is_empty() {
        return "no snapshots: serving nothing (give ARCHIVE arguments or --config)".into();
    }
    let default = catalog.default_snapshot().map(|d| d.name.as_str());
    let names: Vec<String> = catalog
        .entries()
        .iter()
        .map(|e| {
            if Some(e.name.as_str()) == default {
                format!("{} (default)", e.name)
            } else {
                e.name.clone()
            }
        })
        .collect();
    format!("serving {} snapshot(s): {}", names.len(), names.join(", "))
}

//! The set of snapshots served, by name. A catalog is immutable; a reload builds a new one and
//! swaps it in through a [`CatalogHandle`], so a connection keeps the catalog it started with.
//! How names on the wire map to a snapshot and stream lives in [`super::names`].

use std::sync::{Arc, RwLock};

use super::names::valid_name;
use crate::store::Snapshot;

/// One served snapshot.
#[derive(Debug, Clone)]
pub struct NamedSnapshot {
    /// Unique name (`[A-Za-z0-9._-]`, not `disk` or `memory`).
    pub name: String,
    /// The open snapshot.
    pub snapshot: Snapshot,
}

/// An invalid snapshot set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// Two snapshots share a name.
    #[error("duplicate snapshot name {0:?}")]
    Duplicate(String),
    /// A name with characters outside `[A-Za-z0-9._-]`, empty, or reserved.
    #[error(
        "invalid snapshot name {0:?}: use letters, digits, '.', '_' or '-', not \"disk\" or \"memory\""
    )]
    InvalidName(String),
}

/// The snapshots served, in configuration order. The default snapshot answers `/disk`,
/// `/memory` and the NBD export names `""`, `disk` and `memory`.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Vec<NamedSnapshot>,
    default: Option<usize>,
}

impl Catalog {
    /// Builds a catalog. `default` names the default snapshot; `None` makes the first one the
    /// default.
    pub fn new(
        entries: Vec<NamedSnapshot>,
        default: Option<&str>,
    ) -> Result<Catalog, CatalogError> {
        for (i, e) in entries.iter().enumerate() {
            if !valid_name(&e.name) {
                return Err(CatalogError::InvalidName(e.name.clone()));
            }
            if entries[..i].iter().any(|o| o.name == e.name) {
                return Err(CatalogError::Duplicate(e.name.clone()));
            }
        }
        let default = match default {
            Some(d) => entries.iter().position(|e| e.name == d),
            None if entries.is_empty() => None,
            None => Some(0),
        };
        Ok(Catalog { entries, default })
    }

    /// All snapshots, in order.
    pub fn entries(&self) -> &[NamedSnapshot] {
        &self.entries
    }

    /// True when nothing is served.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The snapshot called `name`.
    pub fn get(&self, name: &str) -> Option<&NamedSnapshot> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The default snapshot.
    pub fn default_snapshot(&self) -> Option<&NamedSnapshot> {
        self.default.map(|i| &self.entries[i])
    }
}

/// The current catalog, swappable atomically (SIGHUP reload). Readers take an `Arc` snapshot
/// of it at connection start.
#[derive(Debug, Default)]
pub struct CatalogHandle {
    current: RwLock<Arc<Catalog>>,
}

impl CatalogHandle {
    /// A handle holding `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        CatalogHandle {
            current: RwLock::new(Arc::new(catalog)),
        }
    }

    /// The catalog in effect now.
    pub fn load(&self) -> Arc<Catalog> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the catalog; connections already open keep the old one.
    pub fn store(&self, catalog: Catalog) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(catalog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> NamedSnapshot {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2");
        NamedSnapshot {
            name: name.into(),
            snapshot: Snapshot::open(dir.join("hello-lz4.hxz")).expect("fixture opens"),
        }
    }

    #[test]
    fn duplicate_and_invalid_names_are_refused() {
        assert_eq!(
            Catalog::new(vec![entry("a"), entry("a")], None).unwrap_err(),
            CatalogError::Duplicate("a".into())
        );
        assert_eq!(
            Catalog::new(vec![entry("disk")], None).unwrap_err(),
            CatalogError::InvalidName("disk".into())
        );
    }

    #[test]
    fn the_first_snapshot_is_the_default_unless_one_is_named() {
        let c = Catalog::new(vec![entry("a"), entry("b")], None).unwrap();
        assert_eq!(c.default_snapshot().map(|e| e.name.as_str()), Some("a"));
        let c = Catalog::new(vec![entry("a"), entry("b")], Some("b")).unwrap();
        assert_eq!(c.default_snapshot().map(|e| e.name.as_str()), Some("b"));
        assert!(Catalog::default().default_snapshot().is_none());
    }

    #[test]
    fn a_handle_swaps_and_old_readers_keep_theirs() {
        let h = CatalogHandle::new(Catalog::new(vec![entry("a")], None).unwrap());
        let before = h.load();
        h.store(Catalog::new(vec![entry("b")], None).unwrap());
        assert!(before.get("a").is_some());
        assert!(h.load().get("b").is_some() && h.load().get("a").is_none());
    }
}

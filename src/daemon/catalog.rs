//! The set of snapshots a daemon serves, by name, and how names on the wire map to a snapshot
//! and stream (design.md §5). A catalog is immutable; a reload builds a new one and swaps it in
//! through a [`CatalogHandle`], so a connection keeps the catalog it started with.

use std::sync::{Arc, RwLock};

use crate::format::Stream;
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

/// True for a name usable as a snapshot name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "disk"
        && name != "memory"
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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

    /// Resolves an NBD export name (design.md §5): `""` and `disk` are the default snapshot's
    /// main stream, `memory` its auxiliary stream; `NAME`, `NAME/disk`, `NAME/memory` address
    /// any snapshot.
    pub fn resolve_export(&self, export: &str) -> Option<(&NamedSnapshot, Stream)> {
        match export {
            "" | "disk" => self.default_snapshot().map(|s| (s, Stream::Main)),
            "memory" => self.default_snapshot().map(|s| (s, Stream::Aux)),
            _ => {
                let (name, stream) = match export.rsplit_once('/') {
                    Some((n, "disk")) => (n, Stream::Main),
                    Some((n, "memory")) => (n, Stream::Aux),
                    Some(_) => return None,
                    None => (export, Stream::Main),
                };
                self.get(name).map(|s| (s, stream))
            }
        }
    }

    /// Every export name with its snapshot and stream, in a stable order: the default's short
    /// names first, then `NAME`, `NAME/disk`, `NAME/memory` for each snapshot.
    pub fn export_names(&self) -> Vec<(String, &NamedSnapshot, Stream)> {
        let mut v = Vec::new();
        if let Some(d) = self.default_snapshot() {
            v.push((String::new(), d, Stream::Main));
            v.push(("disk".to_string(), d, Stream::Main));
            v.push(("memory".to_string(), d, Stream::Aux));
        }
        for e in &self.entries {
            v.push((e.name.clone(), e, Stream::Main));
            v.push((format!("{}/disk", e.name), e, Stream::Main));
            v.push((format!("{}/memory", e.name), e, Stream::Aux));
        }
        v
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

    #[test]
    fn names() {
        assert!(valid_name("vm-1.snap_2"));
        for bad in ["", "disk", "memory", "a/b", "a b", "..", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}

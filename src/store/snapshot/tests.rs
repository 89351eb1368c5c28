//! Unit tests of `Snapshot` (its behaviour is tested through the store's integration tests).

use super::*;

#[test]
fn snapshot_is_send_and_sync() {
    fn is<T: Send + Sync>() {}
    is::<Snapshot>();
}

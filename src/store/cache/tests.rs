//! Unit tests of the sharded cache: in-flight dedup, admission, budgets.
use super::*;

type C = ShardedCache<u64, Arc<Vec<u8>>, String>;

/// Misses `key` once (a load that is not kept), so that its next load is admitted.
fn seen(c: &C, key: u64) {
    let Entry::Owner(p) = c.entry(&key, Span::default(), |_| ()) else {
        panic!("expected a new load")
    };
    assert!(!p.admitted());
    c.complete(&key, &p, Ok(Arc::new(vec![0; 4])), 4);
    assert!(c.get(&key).is_none(), "a first load is not kept");
}

#[test]
fn owner_then_waiter_then_hit() {
    let c = C::new(64 << 20);
    seen(&c, 1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let Lookup::Owner(p) = c.get_or_wait(&1, Span::default(), &tx, 10) else {
        panic!("first lookup must own")
    };
    assert!(matches!(
        c.get_or_wait(&1, Span::default(), &tx, 11),
        Lookup::Waiting
    ));
    assert!(c.claim(&1).is_none());
    c.complete(&1, &p, Ok(Arc::new(vec![7; 100])), 100);
    let mut tags: Vec<usize> = rx
        .try_iter()
        .map(|(t, r)| {
            assert_eq!(r.unwrap().len(), 100);
            t
        })
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, [10, 11]);
    assert!(matches!(
        c.get_or_wait(&1, Span::default(), &tx, 12),
        Lookup::Hit(_)
    ));
}

#[test]
fn errors_are_not_cached() {
    let c = C::new(64 << 20);
    seen(&c, 1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let Lookup::Owner(p) = c.get_or_wait(&1, Span::default(), &tx, 0) else {
        panic!()
    };
    c.complete(&1, &p, Err("crc".into()), 0);
    assert_eq!(rx.recv().unwrap().1.unwrap_err(), "crc");
    assert!(matches!(
        c.get_or_wait(&1, Span::default(), &tx, 0),
        Lookup::Owner(_)
    ));
}

#[test]
fn capacity_is_respected() {
    let c = C::new(8 << 20);
    for k in 0..1000u64 {
        c.insert(k, Arc::new(vec![0; 64 << 10]), 64 << 10);
    }
    assert!(c.used() <= c.capacity());
    assert!(c.len() > 50, "{}", c.len());
}

#[test]
fn complete_with_builds_the_value_only_when_wanted() {
    let off = C::new(0);
    let (tx, rx) = crossbeam_channel::unbounded();
    let Lookup::Owner(p) = off.get_or_claim(&1, Span::default(), &tx, 0) else {
        panic!("expected owner")
    };
    off.complete_with(&1, &p, Ok(()), 4, || unreachable!("nobody wants it"));
    assert!(rx.try_recv().is_err(), "an owner is not its own waiter");
    // The load is over: the next reader owns a new one.
    let Lookup::Owner(p) = off.get_or_claim(&1, Span::default(), &tx, 0) else {
        panic!("expected owner")
    };
    let (tx2, rx2) = crossbeam_channel::unbounded();
    assert!(matches!(
        off.get_or_claim(&1, Span::default(), &tx2, 7),
        Lookup::Waiting
    ));
    off.complete_with(&1, &p, Ok(()), 4, || Ok(Arc::new(vec![9; 4])));
    assert_eq!(rx2.recv().unwrap(), (7, Ok(Arc::new(vec![9; 4]))));

    let on = C::new(64 << 20);
    // First loads are not kept: nothing is built.
    let Lookup::Owner(p) = on.get_or_claim(&2, Span::default(), &tx, 0) else {
        panic!("expected owner")
    };
    on.complete_with(&2, &p, Ok(()), 4, || unreachable!("not admitted"));
    let Lookup::Owner(p) = on.get_or_claim(&2, Span::default(), &tx, 0) else {
        panic!("expected owner")
    };
    on.complete_with(&2, &p, Ok(()), 4, || Ok(Arc::new(vec![1; 4])));
    assert_eq!(on.get(&2), Some(Arc::new(vec![1; 4])));
    seen(&on, 3);
    let Lookup::Owner(p) = on.get_or_claim(&3, Span::default(), &tx, 0) else {
        panic!("expected owner")
    };
    on.complete_with(&3, &p, Err("bad".to_string()), 4, || unreachable!());
    assert!(on.get(&3).is_none());
}

#[test]
fn a_scan_of_one_touch_keys_leaves_the_kept_blocks_alone() {
    let c = ShardedCache::<u64, Arc<Vec<u8>>, String>::with_shards(8 << 20, 1);
    let block = || Ok(Arc::new(vec![0; 64 << 10]));
    for k in 0..32 {
        seen(&c, k);
        let Entry::Owner(p) = c.entry(&k, Span::default(), |_| ()) else {
            panic!()
        };
        assert!(p.admitted(), "second miss is kept");
        c.complete(&k, &p, block(), 64 << 10);
    }
    let used = c.used();
    // A scan of 10,000 new keys: every load is a first miss, none is kept.
    for k in 1000..11_000 {
        let Entry::Owner(p) = c.entry(&k, Span::default(), |_| ()) else {
            panic!()
        };
        assert!(!p.admitted());
        c.complete(&k, &p, block(), 64 << 10);
    }
    assert_eq!(c.used(), used);
    assert!(
        (0..32).all(|k| c.get(&k).is_some()),
        "hot keys survive the scan"
    );
    // Prefetch claims are always kept.
    let p = c.claim(&5000).unwrap_or_else(|| panic!("not loading"));
    assert!(p.admitted());
}

#[test]
fn zero_capacity_caches_nothing_but_still_dedups() {
    let c = C::new(0);
    let (tx, _rx) = crossbeam_channel::unbounded();
    let Lookup::Owner(p) = c.get_or_wait(&1, Span::default(), &tx, 0) else {
        panic!()
    };
    assert!(matches!(
        c.get_or_wait(&1, Span::default(), &tx, 1),
        Lookup::Waiting
    ));
    c.complete(&1, &p, Ok(Arc::new(vec![1])), 1);
    assert!(c.is_empty());
}

/// Regression (issue 11): a reader that found a load in flight registered as its waiter after
/// the shard lock was released, so an owner ending an unkept load in between saw no waiter
/// and the reader waited forever. Waiters now register inside `entry`, under the lock.
#[test]
fn a_waiter_found_during_an_unkept_load_gets_the_value() {
    let c = C::new(64 << 20);
    let Entry::Owner(p) = c.entry(&1, Span::default(), |_| ()) else {
        panic!("expected a new load")
    };
    assert!(!p.admitted());
    let (tx, rx) = crossbeam_channel::unbounded();
    let Entry::Loading(()) = c.entry(&1, Span::default(), |w| w.wait(tx.clone(), 5)) else {
        panic!("expected the load in flight")
    };
    c.complete_with(&1, &p, Ok(()), 4, || Ok(Arc::new(vec![3; 4])));
    assert_eq!(rx.try_recv().ok(), Some((5, Ok(Arc::new(vec![3; 4])))));
    assert!(c.get(&1).is_none(), "still not kept");
}

#[test]
fn a_read_continuing_where_the_last_stopped_is_not_a_second_use() {
    let c = C::new(64 << 20);
    let span = |start, end| Span { start, end };
    let load = |s: Span| {
        let Entry::Owner(p) = c.entry(&9, s, |_| ()) else {
            panic!("expected a new load")
        };
        let kept = p.admitted();
        c.complete(&9, &p, Ok(Arc::new(vec![0; 100])), 100);
        kept
    };
    // A scan straddling the block: two reads, the second where the first stopped.
    assert!(!load(span(0, 40)));
    assert!(!load(span(40, 100)));
    // A third read in a row that continues: small sequential reads, kept.
    let c2 = C::new(64 << 20);
    let mut admitted = Vec::new();
    for (s, e) in [(0, 10), (10, 20), (20, 30)] {
        let Entry::Owner(p) = c2.entry(&9, span(s, e), |_| ()) else {
            panic!("expected a new load")
        };
        admitted.push(p.admitted());
        c2.complete(&9, &p, Ok(Arc::new(vec![0; 100])), 100);
    }
    assert_eq!(admitted, [false, false, true]);
    // Reading the same part again is a second use.
    let c3 = C::new(64 << 20);
    for (i, want) in [false, true].into_iter().enumerate() {
        let Entry::Owner(p) = c3.entry(&9, span(0, 40), |_| ()) else {
            panic!("expected a new load, round {i}")
        };
        assert_eq!(p.admitted(), want);
        c3.complete(&9, &p, Ok(Arc::new(vec![0; 100])), 100);
    }
}

//! A restart of flaxd is not a departure (real etcd, real Open vSwitch per simulated node):
//! across a clean stop or a crash followed by a new flaxd within the lease TTL, the node's
//! record is never deleted or rewritten (peers see no event at all), the new flaxd adopts
//! the lease, and it writes nothing to OVSDB. A node whose record is deleted or overwritten
//! while its flaxd runs gets it back. VTEPs are TEST-NET-1 addresses no packet goes to.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Etcd, LONG, Node, WriteCounter, eventually, init_logs};
use flaxd::Daemon;
use flaxd::etcd::{etcd_client, node_key};
use flaxd::linen::model::ObservedPort;

/// The TTL of these tests: long enough for a restart, short enough to see an expiry.
const TTL: i64 = 10;

/// The lease and modification revision of `node`'s record.
async fn record(kv: &mut etcd_client::Client, node: &str) -> Option<(i64, i64, Vec<u8>)> {
    let r = kv.get(node_key("/linen", node), None).await.unwrap();
    r.kvs()
        .first()
        .map(|kv| (kv.lease(), kv.mod_revision(), kv.value().to_vec()))
}

fn uuids(t: &std::collections::BTreeMap<std::net::IpAddr, ObservedPort>) -> Vec<String> {
    t.values().map(|p| p.uuid.clone()).collect()
}

/// Waits until `d` has read the membership and applied it successfully once.
async fn converged(d: &Daemon) {
    eventually("a successful pass of the new flaxd", LONG, || async {
        let m = d.metrics();
        let synced = d.members().borrow().synced;
        (synced && m.reconciles.load(Ordering::Relaxed) >= 1 && m.health().is_ok()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_or_crashed_flaxd_keeps_its_node_a_member_and_writes_nothing() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let da = a.start_etcd(&eps, TTL).await;
    let db = b.start_etcd(&eps, TTL).await;
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    let b_tunnels = uuids(&b.ovs.await_tunnels(&[("a", "192.0.2.1")]).await);
    let a_tunnels = uuids(&a.ovs.tunnels().await);
    converged(&da).await;
    let conflist = std::fs::read(&a.conflist).unwrap();

    let mut kv = etcd.client().await;
    let (lease, rev, _) = record(&mut kv, "a").await.expect("a's record");
    // Every event on a's record from now on, as a peer's watch would see it.
    let mut events = kv
        .watch(
            node_key("/linen", "a"),
            Some(etcd_client::WatchOptions::new().with_start_revision(rev + 1)),
        )
        .await
        .unwrap();

    let mut da = Some(da);
    for crash in [false, true] {
        let old = da.take().unwrap();
        let mut writes = WriteCounter::start(&a.ovs.addr()).await;
        let down = Instant::now();
        if crash {
            old.kill();
        } else {
            old.shutdown().await.expect("clean shutdown");
        }
        // The old flaxd removed nothing on its way out.
        assert_eq!(std::fs::read(&a.conflist).unwrap(), conflist);
        assert_eq!(uuids(&a.ovs.tunnels().await), a_tunnels);
        let new = a.start_etcd(&eps, TTL).await;
        converged(&new).await;
        eprintln!(
            "{}: new flaxd converged {:.2}s after the old one went",
            if crash { "SIGKILL" } else { "SIGTERM" },
            down.elapsed().as_secs_f64()
        );
        let changes = writes.changes().await;
        assert_eq!(
            changes,
            Vec::<String>::new(),
            "OVSDB writes (crash: {crash})"
        );
        assert_eq!(new.metrics().conflist_writes.load(Ordering::Relaxed), 0);
        assert_eq!(std::fs::read(&a.conflist).unwrap(), conflist);
        // Adopted: the same lease, the record never rewritten.
        assert_eq!(
            record(&mut kv, "a").await.map(|r| (r.0, r.1)),
            Some((lease, rev))
        );
        assert!(db.members().borrow().members.contains_key("a"));
        da = Some(new);
    }
    let da = da.unwrap();
    assert_eq!(uuids(&a.ovs.tunnels().await), a_tunnels);
    assert_eq!(uuids(&b.ovs.tunnels().await), b_tunnels);

    // The adopted lease is kept alive: past several TTLs, the record is still there.
    tokio::time::sleep(Duration::from_secs(TTL as u64 + 2)).await;
    assert_eq!(
        record(&mut kv, "a").await.map(|r| (r.0, r.1)),
        Some((lease, rev))
    );
    // Not one event on a's record since before the first stop: peers never saw it leave.
    while let Ok(msg) = tokio::time::timeout(Duration::from_millis(200), events.message()).await {
        let msg = msg.expect("watch").expect("a watch response");
        assert!(msg.events().is_empty(), "an event on a's record: {msg:?}");
    }
    da.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_overwritten_record_is_put_back() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let da = a.start_etcd(&eps, TTL).await;
    let db = b.start_etcd(&eps, TTL).await;
    b.ovs.await_tunnels(&[("a", "192.0.2.1")]).await;
    let mut kv = etcd.client().await;
    let (lease, _, value) = record(&mut kv, "a").await.expect("a's record");
    for (restores, how) in (1..).zip(["deleted", "overwritten", "moved off its lease"]) {
        let key = node_key("/linen", "a");
        match how {
            "deleted" => drop(kv.delete(key, None).await.unwrap()),
            "overwritten" => drop(kv.put(key, "garbage", None).await.unwrap()),
            _ => drop(kv.put(key, value.clone(), None).await.unwrap()),
        }
        let t = Instant::now();
        eventually(&format!("a's record back after it was {how}"), LONG, || {
            let (mut kv, value) = (kv.clone(), value.clone());
            async move {
                record(&mut kv, "a")
                    .await
                    .filter(|r| r.0 == lease && r.2 == value)
            }
        })
        .await;
        eprintln!("record {how}: back in {:.2}s", t.elapsed().as_secs_f64());
        b.ovs.await_tunnels(&[("a", "192.0.2.1")]).await;
        eventually("the restore counted", LONG, || async {
            (da.metrics().record_restores.load(Ordering::Relaxed) == restores).then_some(())
        })
        .await;
        assert_eq!(da.metrics().not_member(), None);
    }
    da.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_flaxd_stays_down_past_the_ttl_is_dropped_and_rejoins() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let da = a.start_etcd(&eps, 2).await;
    let db = b.start_etcd(&eps, 2).await;
    b.ovs.await_tunnels(&[("a", "192.0.2.1")]).await;

    // A clean stop leaves the record to its lease: gone after the TTL, not at once.
    let stopped = Instant::now();
    da.shutdown().await.unwrap();
    b.ovs.await_tunnels(&[]).await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "dropped before the TTL: {:?}",
        stopped.elapsed()
    );
    // The new flaxd finds the lease expired and registers anew.
    let da = a.start_etcd(&eps, 2).await;
    b.ovs.await_tunnels(&[("a", "192.0.2.1")]).await;
    da.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
}

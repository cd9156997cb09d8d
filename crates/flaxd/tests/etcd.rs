//! flaxd with the etcd source, against a real etcd (started per test on loopback) and a real
//! Open vSwitch per simulated node (userspace datapath). VTEPs are TEST-NET-1 addresses
//! that no packet is ever sent to.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Etcd, LONG, Node, eventually, http_get, init_logs};
use flaxd::Daemon;
use flaxd::etcd::{
    Resume, allocate_subnet, etcd_client, follow_members, leave, node_key, release_subnets,
};
use flaxd::membership::Publisher;
use flaxd::subnet::Slices;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_and_a_node_that_leaves_is_dropped_at_once() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let c = Node::new("c", "192.0.2.3");
    // A long TTL: only the revoke on shutdown can make c disappear in time.
    let da = a.start_etcd(&eps, 60).await;
    let db = b.start_etcd(&eps, 60).await;
    let dc = c.start_etcd(&eps, 60).await;

    a.ovs
        .await_tunnels(&[("b", "192.0.2.2"), ("c", "192.0.2.3")])
        .await;
    b.ovs
        .await_tunnels(&[("a", "192.0.2.1"), ("c", "192.0.2.3")])
        .await;
    let t = c
        .ovs
        .await_tunnels(&[("a", "192.0.2.1"), ("b", "192.0.2.2")])
        .await;
    assert!(
        t.values().all(|p| p.protected),
        "a mesh's tunnels are protected"
    );

    // Each node got its own pod subnet, and its conflist says so.
    let gateways: BTreeSet<String> = [
        a.await_conflist_subnet().await,
        b.await_conflist_subnet().await,
        c.await_conflist_subnet().await,
    ]
    .into();
    assert_eq!(gateways.len(), 3, "{gateways:?}");

    // c's flaxd stops: a restart is not a departure, c stays a member.
    dc.shutdown().await.expect("clean shutdown");
    assert!(da.members().borrow().members.contains_key("c"));
    // c leaves for good (`flaxd --leave`): its lease is revoked, so the others drop it well
    // before the TTL.
    let left = Instant::now();
    let mut kv = etcd.client().await;
    let gone = leave(&mut kv, "/linen", "c").await.expect("leave");
    assert!(gone.was_member && gone.revoked.is_some(), "{gone:?}");
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    b.ovs.await_tunnels(&[("a", "192.0.2.1")]).await;
    assert!(
        left.elapsed() < Duration::from_secs(15),
        "{:?}",
        left.elapsed()
    );
    let again = leave(&mut kv, "/linen", "c").await.expect("leave again");
    assert!(!again.was_member, "idempotent: {again:?}");

    // Its pod subnet stays allocated (its pods may still use it) until it is released
    // (`flaxd --leave --release-subnet`): then c's allocation, and only c's, is gone.
    let holders = |kv: &mut etcd_client::Client| {
        let mut kv = kv.clone();
        async move {
            let resp = kv
                .get(
                    "/linen/subnets/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .expect("read allocations");
            resp.kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                .collect::<BTreeSet<String>>()
        }
    };
    let all: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    assert_eq!(holders(&mut kv).await, all);
    let released = release_subnets(&mut kv, "/linen", "c")
        .await
        .expect("release");
    assert_eq!(released.len(), 1, "{released:?}");
    let gw_c: std::net::IpAddr = c.await_conflist_subnet().await.parse().unwrap();
    assert!(
        released[0].contains(&gw_c),
        "the released {released:?} is c's subnet (gateway {gw_c})"
    );
    let left: BTreeSet<String> = ["a", "b"].map(String::from).into();
    assert_eq!(holders(&mut kv).await, left);
    let none = release_subnets(&mut kv, "/linen", "c")
        .await
        .expect("release again");
    assert!(none.is_empty(), "idempotent: {none:?}");

    assert_eq!(da.metrics().members.load(Ordering::Relaxed), 2);
    da.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_dropped_after_its_lease_expires() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let da = a.start_etcd(&eps, 2).await;
    let db = b.start_etcd(&eps, 2).await;
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;

    // No revoke: b's record stays until the lease runs out.
    let killed = Instant::now();
    db.kill();
    a.ovs.await_tunnels(&[]).await;
    assert!(
        killed.elapsed() >= Duration::from_millis(1000),
        "dropped before the TTL: {:?}",
        killed.elapsed()
    );
    da.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_member_records_are_skipped() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let mut kv = etcd.client().await;
    for (name, value) in [
        ("garbage", "not json"),
        ("loop", r#"{"vtep":"127.0.0.1"}"#),
        ("noaddr", r#"{"podCIDR":"10.244.9.0/24"}"#),
    ] {
        kv.put(node_key("/linen", name), value, None).await.unwrap();
    }
    kv.put("/linen/nodes/", r#"{"vtep":"192.0.2.8"}"#, None)
        .await
        .unwrap();
    let a = Node::new("a", "192.0.2.1");
    let da = a.start_etcd(&eps, 10).await;
    // Nothing to tunnel to, but a is healthy: the bad records were skipped.
    eventually("a healthy reconcile", LONG, || async {
        da.metrics().health().ok()
    })
    .await;
    assert!(a.ovs.tunnels().await.is_empty());

    // A good record written by hand is picked up; a later bad write removes it.
    kv.put(node_key("/linen", "x"), r#"{"vtep":"192.0.2.9"}"#, None)
        .await
        .unwrap();
    a.ovs.await_tunnels(&[("x", "192.0.2.9")]).await;
    kv.put(node_key("/linen", "x"), "{", None).await.unwrap();
    a.ovs.await_tunnels(&[]).await;
    assert!(da.members().borrow().members.keys().eq(["a"]));
    da.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subnet_allocations_never_collide() {
    init_logs();
    let etcd = Etcd::start().await;
    // 16 slices for 16 nodes racing: every one must get a different slice.
    let slices = Slices::new("10.244.0.0/20".parse().unwrap(), 24).unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = etcd.client().await;
        tasks.push(tokio::spawn(async move {
            allocate_subnet(&mut client, "/linen", &format!("node-{i}"), &slices).await
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap().expect("allocated"));
    }
    let distinct: BTreeSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), 16, "{got:?}");
    assert!(got.iter().all(|n| slices.contains(n)));

    // A restarted node gets its own allocation back; a 17th node finds none left.
    let mut client = etcd.client().await;
    let again = allocate_subnet(&mut client, "/linen", "node-3", &slices)
        .await
        .unwrap();
    assert_eq!(again, got[3]);
    let err = allocate_subnet(&mut client, "/linen", "node-16", &slices)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("allocate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_lists_again() {
    init_logs();
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    kv.put(node_key("/linen", "a"), r#"{"vtep":"192.0.2.1"}"#, None)
        .await
        .unwrap();
    let listed = kv
        .get(
            "/linen/nodes/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let old_rev = listed.header().unwrap().revision();

    // While "our" watch is behind (it resumes from old_rev), nodes change and etcd compacts.
    kv.put(node_key("/linen", "b"), r#"{"vtep":"192.0.2.2"}"#, None)
        .await
        .unwrap();
    kv.delete(node_key("/linen", "a"), None).await.unwrap();
    let r = kv
        .put(node_key("/linen", "c"), r#"{"vtep":"192.0.2.3"}"#, None)
        .await
        .unwrap();
    let rev = r.header().unwrap().revision();
    kv.compact(rev, None).await.unwrap();

    let stale = Resume {
        members: [(
            "a".to_string(),
            flaxd::Member {
                vtep: "192.0.2.1".parse().unwrap(),
                pod_cidrs: Vec::new(),
            },
        )]
        .into(),
        revision: old_rev,
    };
    let (publisher, rx) = Publisher::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (client, shutdown) = (etcd.client().await, shutdown.clone());
        async move { follow_members(client, "/linen", &publisher, Some(stale), shutdown).await }
    });
    eventually("the membership after compaction", LONG, || async {
        rx.borrow().members.keys().eq(["b", "c"]).then_some(())
    })
    .await;
    // And the new watch works.
    kv.put(node_key("/linen", "d"), r#"{"vtep":"192.0.2.4"}"#, None)
        .await
        .unwrap();
    eventually("d after the re-watch", LONG, || async {
        rx.borrow().members.contains_key("d").then_some(())
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
}

/// A 3-member etcd cluster and two flaxds (a, b; lease TTL 3 s) on every member's
/// endpoint, a with its tunnel to b.
async fn two_nodes_on_three_members() -> (Etcd, Node, Node, Daemon, Daemon) {
    init_logs();
    let etcd = Etcd::cluster(3).await;
    let eps = etcd.all_endpoints();
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let da = a.start_etcd(&eps, 3).await;
    let db = b.start_etcd(&eps, 3).await;
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    (etcd, a, b, da, db)
}

/// Asserts that `d`'s membership holds `peer` at every check (100 ms apart) for `how_long`.
async fn keeps_member(d: &Daemon, peer: &str, how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        assert!(
            d.members().borrow().members.contains_key(peer),
            "{peer} was dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_etcd_cluster_survives_a_stopped_member() {
    let (mut etcd, a, b, da, db) = two_nodes_on_three_members().await;

    etcd.stop(0);
    // Membership keeps flowing through the remaining quorum: a node joins, and a node leaves.
    let c = Node::new("c", "192.0.2.3");
    let dc = c.start_etcd(&etcd.all_endpoints(), 3).await;
    a.ovs
        .await_tunnels(&[("b", "192.0.2.2"), ("c", "192.0.2.3")])
        .await;
    b.ovs
        .await_tunnels(&[("a", "192.0.2.1"), ("c", "192.0.2.3")])
        .await;
    c.ovs
        .await_tunnels(&[("a", "192.0.2.1"), ("b", "192.0.2.2")])
        .await;
    dc.shutdown().await.unwrap();
    leave(&mut etcd.client().await, "/linen", "c")
        .await
        .expect("c leaves");
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    // Leases keep being renewed through the survivors: for more than a TTL, a never loses b.
    keeps_member(&da, "b", Duration::from_secs(4)).await;
    b.ovs.await_tunnels(&[("a", "192.0.2.1")]).await;
    da.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_is_applied_in_a_few_transactions() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let a = Node::new("a", "192.0.2.1");
    let da = a.start_etcd(&eps, 10).await;
    eventually("a first pass", LONG, || async {
        da.metrics().health().ok()
    })
    .await;
    let passes_before = da.metrics().reconciles.load(Ordering::Relaxed);

    // 200 nodes join in two etcd transactions of 100 (TEST-NET-2 and -3 addresses): two
    // revisions, whatever etcd's write latency is against the 20 ms debounce. Joins one by
    // one would make the pass count measure that latency instead of the daemon.
    let mut kv = etcd.client().await;
    let mut want = Vec::new();
    for half in 0..2u32 {
        let mut puts = Vec::new();
        for i in half * 100..(half + 1) * 100 {
            let ip = if i < 100 {
                format!("198.51.100.{}", i + 1)
            } else {
                format!("203.0.113.{}", i - 99)
            };
            let value = format!(r#"{{"vtep":"{ip}"}}"#);
            puts.push(etcd_client::TxnOp::put(
                node_key("/linen", &format!("n{i}")),
                value,
                None,
            ));
            want.push((format!("n{i}"), ip));
        }
        kv.txn(etcd_client::Txn::new().and_then(puts))
            .await
            .unwrap();
    }
    let want: Vec<(&str, &str)> = want
        .iter()
        .map(|(n, ip)| (n.as_str(), ip.as_str()))
        .collect();
    a.ovs.await_tunnels(&want).await;
    let passes = da.metrics().reconciles.load(Ordering::Relaxed) - passes_before;
    // At most one pass per revision, each followed by at most one more when the OVSDB
    // monitor reports the pass's own write (a no-op read): 4. One spare for a pass already
    // triggered when the count was taken.
    assert!(passes <= 5, "{passes} passes for 200 joins in 2 revisions");
    da.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaxd_waits_for_etcd_to_come_up() {
    init_logs();
    let port = common::free_port();
    let eps = vec![format!("http://127.0.0.1:{port}")];
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let da = a.start_etcd(&eps, 10).await;
    let db = b.start_etcd(&eps, 10).await;
    // No etcd yet: the daemons keep trying, touching nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!da.members().borrow().synced);
    assert!(a.ovs.tunnels_if_bridge().await.is_empty());

    let _etcd = Etcd::start_at(port).await;
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    b.ovs.await_tunnels(&[("a", "192.0.2.1")]).await;
    da.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_pod_cidr_is_recorded_and_never_shared() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let mut kv = etcd.client().await;
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let da = a.start_etcd_fixed(&eps, 10, "10.244.7.0/24").await;
    assert_eq!(a.await_conflist_subnet().await, "10.244.7.1");
    // Recorded as taken, like an allocation.
    let key = "/linen/subnets/10.244.7.0-24";
    let held = kv.get(key, None).await.unwrap();
    assert_eq!(held.kvs()[0].value(), b"a");

    // b is configured with a subnet inside a's: refused, loudly, and b joins nothing.
    let db = b.start_etcd_fixed(&eps, 10, "10.244.7.128/25").await;
    let why = eventually("b to refuse its pod subnet", LONG, || async {
        db.metrics().pod_cidr_conflict()
    })
    .await;
    assert!(
        why.contains("10.244.7.0/24") && why.contains("node a's"),
        "{why}"
    );
    let addr = db.metrics_addr().unwrap();
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pod CIDR conflict"), "{body}");
    let (_, text) = http_get(addr, "/metrics").await;
    assert!(
        text.lines().any(|l| l == "flaxd_pod_cidr_conflict 1"),
        "{text}"
    );
    assert!(!b.conflist.exists(), "no conflist with a refused subnet");
    assert!(a.ovs.tunnels().await.is_empty(), "b never registered");
    let subnets = kv
        .get(
            "/linen/subnets/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(subnets.kvs().len(), 1, "nothing written for b");

    // An allocating node steps around the fixed subnet.
    let slices = Slices::new("10.244.6.0/23".parse().unwrap(), 24).unwrap();
    let mut client = etcd.client().await;
    for node in ["c", "d"] {
        let err = allocate_subnet(&mut client, "/linen", node, &slices).await;
        if node == "c" {
            assert_eq!(err.unwrap().to_string(), "10.244.6.0/24");
        } else {
            assert!(err.is_err(), "both slices are taken now");
        }
    }

    // a restarts with the same subnet: it is its own, no conflict.
    da.shutdown().await.unwrap();
    let da = a.start_etcd_fixed(&eps, 10, "10.244.7.0/24").await;
    eventually("a healthy again", LONG, || async {
        da.metrics().health().ok()
    })
    .await;

    // Once a is gone for good and its subnet released, b heals on its own.
    da.shutdown().await.unwrap();
    kv.delete(key, None).await.unwrap();
    assert_eq!(b.await_conflist_subnet().await, "10.244.7.129");
    eventually("b healthy", LONG, || async { db.metrics().health().ok() }).await;
    let (status, _) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200);
    db.shutdown().await.unwrap();
}

/// A frozen etcd (SIGSTOP: sockets open, nothing answered) says nothing on the membership
/// watch; flaxd still notices through its lease renewal and reports the source
/// disconnected (`flaxd_source_connected 0`), keeps the node's tunnels, and reports it
/// connected again once etcd answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_is_reported_disconnected_until_it_answers_again() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let a = Node::new("a", "192.0.2.1");
    let b = Node::new("b", "192.0.2.2");
    let ttl = 3;
    let da = a.start_etcd(&eps, ttl).await;
    let db = b.start_etcd(&eps, ttl).await;
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    let connected = |d: &Daemon| d.metrics().source_connected.load(Ordering::Relaxed);
    eventually("a connected", LONG, || async {
        connected(&da).then_some(())
    })
    .await;

    etcd.freeze(0);
    let frozen = Instant::now();
    eventually("a to see etcd frozen", LONG, || async {
        (!connected(&da)).then_some(())
    })
    .await;
    let noticed = frozen.elapsed();
    // Nothing is taken down meanwhile: the last membership stands.
    assert!(da.members().borrow().members.contains_key("b"));
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;

    etcd.thaw(0);
    let thawed = Instant::now();
    eventually("a connected again", LONG, || async {
        connected(&da).then_some(())
    })
    .await;
    eprintln!(
        "etcd frozen -> flaxd_source_connected 0 in {:.1}s (lease TTL {ttl}s, request timeout 5s); thawed -> 1 in {:.1}s",
        noticed.as_secs_f64(),
        thawed.elapsed().as_secs_f64()
    );
    assert!(
        noticed >= Duration::from_millis(500),
        "noticed in {noticed:?}: too soon to be the freeze"
    );
    da.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
}

/// Issue 9's fault suite: one member of a 3-member etcd cluster dies in the middle of a
/// burst of 1000 joins (10 transactions of 100, the member SIGKILLed after the 4th). The
/// survivors keep quorum: every join reaches the node's tunnels, a peer (b) is never
/// dropped (its lease is renewed through the survivors), and both flaxds end healthy.
/// VTEPs are from 198.18.0.0/15 (benchmarking, RFC 2544); no packet is sent to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_member_lost_during_a_burst_of_1000_joins_loses_nothing() {
    let (mut etcd, a, _b, da, db) = two_nodes_on_three_members().await;

    let started = Instant::now();
    let mut want = vec![("b".to_owned(), "192.0.2.2".to_owned())];
    for batch in 0..10u32 {
        if batch == 4 {
            etcd.stop(0);
        }
        let mut puts = Vec::new();
        for i in batch * 100..(batch + 1) * 100 {
            let ip = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            let value = format!(r#"{{"vtep":"{ip}"}}"#);
            puts.push(etcd_client::TxnOp::put(
                node_key("/linen", &format!("m{i}")),
                value,
                None,
            ));
            want.push((format!("m{i}"), ip));
        }
        // The writer retries a batch its client sent to the dead member (puts are
        // idempotent); flaxd must need no such help.
        let mut written = false;
        for _ in 0..20 {
            let mut kv = etcd_client::Client::connect(etcd.endpoints(), None)
                .await
                .expect("etcd client");
            if kv
                .txn(etcd_client::Txn::new().and_then(puts.clone()))
                .await
                .is_ok()
            {
                written = true;
                break;
            }
        }
        assert!(
            written,
            "batch {batch} could not be written to the survivors"
        );
        assert!(
            da.members().borrow().members.contains_key("b"),
            "a lost b during the burst (batch {batch})"
        );
    }
    let want: Vec<(&str, &str)> = want
        .iter()
        .map(|(n, ip)| (n.as_str(), ip.as_str()))
        .collect();
    a.ovs.await_tunnels(&want).await;
    eprintln!(
        "1000 joins across an etcd member loss: a has all {} tunnels {:.1}s after the burst began",
        want.len(),
        started.elapsed().as_secs_f64()
    );
    // For longer than a TTL after the loss, b's lease lives on through the survivors.
    keeps_member(&da, "b", Duration::from_secs(4)).await;
    eventually("both flaxds healthy", LONG, || async {
        (da.metrics().health().is_ok() && db.metrics().health().is_ok()).then_some(())
    })
    .await;
    da.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
}

/// Dual-stack: with an IPv4 and an IPv6 cluster CIDR and no fixed subnet, each node gets a
/// slice of each family from etcd (no two nodes share one), its record carries both
/// (`podCIDRs`, as the Node spec does), and its conflist has a range per family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_nodes_get_a_subnet_of_each_family() {
    init_logs();
    let etcd = Etcd::start().await;
    let eps = etcd.endpoints();
    let clusters: Vec<ipnet::IpNet> = vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:10:244::/48".parse().unwrap(),
    ];
    let nodes = [Node::new("a", "192.0.2.1"), Node::new("b", "192.0.2.2")];
    let mut daemons = Vec::new();
    for n in &nodes {
        let mut cfg = n.config();
        cfg.cluster_cidrs = clusters.clone();
        let mut source = n.etcd_config(&eps, 60);
        source.allocate = vec![(clusters[0], 24), (clusters[1], 64)];
        daemons.push(
            Daemon::start(cfg, flaxd::SourceConfig::Etcd(source))
                .await
                .expect("flaxd starts"),
        );
    }
    let mut seen = BTreeSet::new();
    for n in &nodes {
        let conf: serde_json::Value = eventually("a dual-stack conflist", LONG, || async {
            let text = std::fs::read_to_string(&n.conflist).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            (v["plugins"][0]["ipam"]["ranges"].as_array()?.len() == 2).then_some(v)
        })
        .await;
        let ranges = &conf["plugins"][0]["ipam"]["ranges"];
        assert_eq!(ranges[0][0]["subnet"], "10.244.0.0/16");
        assert_eq!(ranges[1][0]["subnet"], "fd00:10:244::/48");
        let gw6: std::net::Ipv6Addr = ranges[1][0]["gateway"].as_str().unwrap().parse().unwrap();
        assert!(clusters[1].contains(&std::net::IpAddr::V6(gw6)), "{gw6}");
        // The record in etcd: both subnets, IPv4 first, and the conflist's.
        let mut kv = etcd.client().await;
        let rec = kv.get(node_key("/linen", &n.name), None).await.unwrap();
        let rec: serde_json::Value =
            serde_json::from_slice(rec.kvs()[0].value()).expect("a record");
        let cidrs: Vec<ipnet::IpNet> = rec["podCIDRs"]
            .as_array()
            .expect("podCIDRs")
            .iter()
            .map(|c| c.as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(cidrs.len(), 2, "{rec}");
        assert_eq!(rec["podCIDR"], rec["podCIDRs"][0]);
        assert_eq!(cidrs[1].prefix_len(), 64);
        assert!(cidrs[1].contains(&std::net::IpAddr::V6(gw6)));
        for c in cidrs {
            assert!(seen.insert(c), "{c} handed out twice");
        }
    }
    // Each daemon sees the other with both subnets.
    let other = daemons[0].members().borrow().members.get("b").cloned();
    assert_eq!(other.map(|m| m.pod_cidrs.len()), Some(2));
    for d in daemons {
        d.shutdown().await.unwrap();
    }
}

//! The reconciler against the recording fake: one pass driven synchronously, and the loop's
//! triggers, debounce and retries in paused time (no real sleeps).

use std::net::Ipv4Addr;

use linen::config::{Datapath, TunnelKey};

use super::*;
use crate::membership::{Member, Membership, Publisher};
use crate::overlay::RecordingOverlay;

fn cfg() -> ReconcilerConfig {
    ReconcilerConfig {
        me: NodeIdentity {
            name: "a".into(),
            vtep: "192.0.2.1".parse().unwrap(),
        },
        policy: TunnelPolicy {
            hub: false,
            key: TunnelKey::Flow,
        },
        bridge: BridgeSpec {
            name: "br0".into(),
            datapath: Datapath::Netdev,
            controllers: Vec::new(),
        },
        conflist: None,
        pod_cidrs: Vec::new(),
        debounce: Duration::from_millis(100),
        resync: Duration::from_secs(60),
        retry: (Duration::from_millis(100), Duration::from_secs(5)),
    }
}

fn member(ip: &str, cidr: Option<&str>) -> Member {
    Member {
        vtep: ip.parse().unwrap(),
        pod_cidrs: cidr.into_iter().map(|c| c.parse().unwrap()).collect(),
    }
}

fn synced(list: &[(&str, &str)]) -> Snapshot {
    Snapshot {
        members: list
            .iter()
            .map(|(n, ip)| (n.to_string(), member(ip, None)))
            .collect(),
        synced: true,
        connected: true,
    }
}

fn remotes(call: &crate::overlay::EnsureCall) -> Vec<String> {
    call.tunnels.iter().map(|t| t.remote.to_string()).collect()
}

#[tokio::test]
async fn one_pass_applies_desired_with_prune() {
    let fake = RecordingOverlay::new();
    let r = Reconciler::new(cfg(), fake.clone(), Metrics::new());

    let not_synced = Snapshot {
        synced: false,
        ..synced(&[("b", "192.0.2.2")])
    };
    assert_eq!(
        r.reconcile_once(&not_synced).await.unwrap(),
        Outcome::NotSynced
    );
    assert!(
        fake.calls().is_empty(),
        "nothing touched before the source synced"
    );

    let snap = synced(&[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")]);
    let out = r.reconcile_once(&snap).await.unwrap();
    assert!(
        matches!(out, Outcome::Applied { tunnels: 2, .. }),
        "{out:?}"
    );
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].prune, Some(Source::Flaxd));
    assert_eq!(calls[0].bridge.name, "br0");
    assert_eq!(remotes(&calls[0]), ["192.0.2.2", "192.0.2.3"]);
    assert!(calls[0].tunnels.iter().all(|t| t.protected));

    // A departed member: the next pass wants fewer tunnels (ensure prunes the rest).
    r.reconcile_once(&synced(&[("a", "192.0.2.1"), ("c", "192.0.2.3")]))
        .await
        .unwrap();
    assert_eq!(remotes(&fake.calls()[1]), ["192.0.2.3"]);
}

#[tokio::test]
async fn a_taken_name_leaves_one_tunnel_out_and_reports_it() {
    let fake = RecordingOverlay::new();
    let metrics = Metrics::new();
    let r = Reconciler::new(cfg(), fake.clone(), metrics.clone());
    fake.name_taken("192.0.2.2".parse().unwrap());
    let snap = synced(&[("b", "192.0.2.2"), ("c", "192.0.2.3")]);
    match r.reconcile_once(&snap).await {
        Err(ReconcileError::Conflicts { remotes, .. }) => {
            assert_eq!(remotes, ["192.0.2.2".parse::<IpAddr>().unwrap()]);
        }
        other => panic!("{other:?}"),
    }
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        remotes(&calls[1]),
        ["192.0.2.3"],
        "the others still applied"
    );
    assert_eq!(metrics.conflicts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn writes_the_conflist_once_the_pod_subnet_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("10-linen.conflist");
    let mut c = cfg();
    c.conflist = Some((
        path.clone(),
        ConflistSpec {
            network: "linen".into(),
            linux_bridge: "kbr0".into(),
            ovs_bridge: "br0".into(),
            ovsdb: "unix:/x".into(),
            controllers: Vec::new(),
            datapath: Datapath::Netdev,
            key: TunnelKey::Flow,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            underlay_mtu: 1500,
            vtep: "192.0.2.1".parse().unwrap(),
            ipam_data_dir: None,
            host_port_dir: None,
        },
    ));
    let r = Reconciler::new(c, RecordingOverlay::new(), Metrics::new());
    let mut snap = synced(&[("b", "192.0.2.2")]);
    let out = r.reconcile_once(&snap).await.unwrap();
    assert!(matches!(
        out,
        Outcome::Applied {
            conflist_written: false,
            ..
        }
    ));
    assert!(!path.exists(), "no pod subnet yet");

    snap.members
        .insert("a".into(), member("192.0.2.1", Some("10.244.7.0/24")));
    let out = r.reconcile_once(&snap).await.unwrap();
    assert!(matches!(
        out,
        Outcome::Applied {
            conflist_written: true,
            ..
        }
    ));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("10.244.7.1"), "{text}");
    let out = r.reconcile_once(&snap).await.unwrap();
    assert!(
        matches!(
            out,
            Outcome::Applied {
                conflist_written: false,
                ..
            }
        ),
        "unchanged"
    );
}

/// Drives `run` in paused tokio time until `done` holds for the recorded calls.
async fn until(fake: &RecordingOverlay, done: impl Fn(&[crate::overlay::EnsureCall]) -> bool) {
    for _ in 0..10_000 {
        if done(&fake.calls()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached; calls: {}", fake.calls().len());
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_a_thousand_joins_is_one_batch() {
    let fake = RecordingOverlay::new();
    let (publisher, rx) = Publisher::new();
    let shutdown = CancellationToken::new();
    let r = Reconciler::new(cfg(), fake.clone(), Metrics::new());
    let task = tokio::spawn(r.run(rx, Arc::new(Notify::new()), shutdown.clone()));

    let mut members = Membership::new();
    members.insert("a".into(), member("192.0.2.1", None));
    for i in 1..1000u32 {
        let ip = Ipv4Addr::from(0x0a00_0000 + i); // a fake overlay: no traffic
        members.insert(format!("n{i}"), member(&ip.to_string(), None));
        publisher.publish(members.clone());
        // One join every 50 µs: within one debounce window.
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
    until(&fake, |c| c.last().is_some_and(|c| c.tunnels.len() == 999)).await;
    let calls = fake.calls();
    assert!(calls.len() <= 2, "{} passes for one burst", calls.len());
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn triggers_retries_and_resync() {
    let fake = RecordingOverlay::new();
    let metrics = Metrics::new();
    let (publisher, rx) = Publisher::new();
    let ovs_changed = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let r = Reconciler::new(cfg(), fake.clone(), metrics.clone());
    let task = tokio::spawn(r.run(rx, ovs_changed.clone(), shutdown.clone()));

    // Nothing happens until the source has synced.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(fake.calls().is_empty());

    // A failure is retried with backoff, without any new trigger.
    fake.fail_next(linen::ovs::OvsError::Contended {
        what: "test".into(),
    });
    publisher.publish(synced(&[("b", "192.0.2.2")]).members);
    until(&fake, |c| c.len() == 2).await;
    assert_eq!(metrics.reconcile_errors.load(Ordering::Relaxed), 1);
    assert!(metrics.health().is_ok(), "healthy again after the retry");

    // An OVS change triggers a pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ovs_changed.notify_one();
    until(&fake, |c| c.len() == 3).await;

    // So does the periodic resync, with nothing else happening.
    let before = tokio::time::Instant::now();
    until(&fake, |c| c.len() == 4).await;
    assert!(
        before.elapsed() >= Duration::from_secs(55),
        "{:?}",
        before.elapsed()
    );

    shutdown.cancel();
    task.await.unwrap();
}

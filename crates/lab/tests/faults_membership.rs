//! Issue 9, defects 1 and 3, on a real lab (root; real etcd with TLS, client certificates
//! and RBAC, a real flaxd process per node, real OVS, real packets):
//! - a client without the lab CA's certificate cannot write (or even connect), and a node's
//!   certificate cannot write another node's record or a record for a node that does not
//!   exist;
//! - a node's record deleted or overwritten while its flaxd runs is back within seconds,
//!   and the cluster's pings pass again;
//! - a second flaxd started with a running node's name refuses to start and says why;
//! - a flaxd paused (SIGSTOP) past its lease TTL is dropped by its peers after the TTL and
//!   is back, with pings passing, soon after SIGCONT.
//!
//! Figures are printed (`--nocapture`).

mod common;

use std::time::{Duration, Instant};

use common::{TestLab, assert_nothing_left, eventually, pings_pass, remotes_of};
use linen_lab::etcd_auth::{self, ROOT};
use linen_lab::pki::CertFiles;
use linen_lab::{Cluster, LabState, Node};

const TTL: u32 = 3;

/// What a client from inside `node` may do to etcd with `cert`.
fn try_put(
    state: &LabState,
    node: &Node,
    cert: Option<&CertFiles>,
    key: &str,
) -> Result<(), String> {
    let etcd = state.etcd.as_ref().unwrap();
    etcd_auth::in_netns(&node.netns, || async {
        let mut c = etcd_auth::connect(etcd, cert).await?;
        c.put(key, r#"{"vtep":"10.245.2.200"}"#, None).await?;
        Ok(())
    })
    .map_err(|e| e.to_string())
}

fn root_put(state: &LabState, key: &str, value: Option<&str>) {
    let etcd = state.etcd.as_ref().unwrap();
    let node = &state.nodes[0];
    let root = etcd.pki().client(ROOT);
    etcd_auth::in_netns(&node.netns, || async {
        let mut c = etcd_auth::connect(etcd, Some(&root)).await?;
        match value {
            Some(v) => drop(c.put(key, v, None).await?),
            None => drop(c.delete(key, None).await?),
        }
        Ok(())
    })
    .expect("root writes");
}

fn root_get(state: &LabState, key: &str) -> Option<String> {
    let etcd = state.etcd.as_ref().unwrap();
    let node = &state.nodes[0];
    let root = etcd.pki().client(ROOT);
    etcd_auth::in_netns(&node.netns, || async {
        let mut c = etcd_auth::connect(etcd, Some(&root)).await?;
        let r = c.get(key, None).await?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    })
    .expect("root reads")
}

#[test]
fn strangers_are_refused_nodes_write_only_their_own_record_and_lost_records_come_back() {
    let lab = TestLab::new();
    let mut cluster = Cluster::up(lab.etcd_spec(3, 1, TTL)).expect("up");
    let state = cluster.state().clone();
    let (n1, n2) = (
        state.node("n1").unwrap().clone(),
        state.node("n2").unwrap().clone(),
    );
    let key = |n: &str| format!("/linen/nodes/{n}");

    // Defect 1: an unauthenticated writer (no client certificate) is refused, and so is
    // a certificate of another CA's... of no CA: only the lab CA's certificates get in.
    let err = try_put(&state, &n1, None, &key("intruder")).expect_err("no certificate");
    eprintln!("no client certificate: {err}");
    // A node's own certificate: its own record yes, another node's or a new one no.
    let own = n1.etcd_client_files();
    for forged in [
        key(&n2.name),
        key("intruder"),
        format!("/linen/holders/{}", n2.name),
    ] {
        let err = try_put(&state, &n1, Some(&own), &forged).expect_err(&forged);
        assert!(err.contains("permission denied"), "{forged}: {err}");
    }
    // Reading the whole prefix and writing the subnets prefix stay allowed (allocation).
    try_put(&state, &n1, Some(&own), "/linen/subnets/probe").expect("subnets are writable");
    root_put(&state, "/linen/subnets/probe", None);
    assert_eq!(
        root_get(&state, &key("intruder")),
        None,
        "nothing was written"
    );
    pings_pass(&state);

    // Defect 3: n2's record deleted, then overwritten with garbage, while its flaxd runs.
    let value = root_get(&state, &key(&n2.name)).expect("n2's record");
    let ip2 = n2.underlay_ip.addr().to_string();
    for (how, write) in [("deleted", None), ("overwritten", Some("garbage"))] {
        let t = Instant::now();
        root_put(&state, &key(&n2.name), write);
        eventually(
            format!("n2's record back after it was {how}"),
            Duration::from_secs(10),
            || (root_get(&state, &key(&n2.name)).as_deref() == Some(value.as_str())).then_some(()),
        );
        let back = t.elapsed();
        for node in state.nodes.iter().filter(|n| n.index != 2) {
            eventually(
                format!("{} to have its tunnel to n2", node.name),
                Duration::from_secs(10),
                || remotes_of(node).contains(&ip2).then_some(()),
            );
        }
        eprintln!(
            "n2's record {how}: back in etcd after {:.3}s, every peer's tunnel after {:.3}s",
            back.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        assert!(back < Duration::from_secs(3), "{back:?}");
    }
    pings_pass(&state);

    // A second flaxd with n2's name (its metrics on another port) refuses to start.
    let etcd = state.etcd.as_ref().unwrap();
    let mut args = linen_lab::flaxd::args(&n2, etcd);
    for a in &mut args {
        if a.starts_with("--metrics-addr=") {
            *a = format!("--metrics-addr={}:9119", n2.underlay_ip.addr());
        }
    }
    let started = Instant::now();
    let out = n2
        .netns
        .command(&linen_lab::flaxd::binary().unwrap().to_string_lossy())
        .args(&args)
        .env("FLAXD_LOG", "info")
        .output()
        .expect("second flaxd runs");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "second flaxd as n2: exit {:?} after {:.2}s",
        out.status.code(),
        started.elapsed().as_secs_f64()
    );
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("node name {} is held by a live flaxd", n2.name)),
        "{err}"
    );
    assert_eq!(
        root_get(&state, &key(&n2.name)).as_deref(),
        Some(value.as_str())
    );
    assert_eq!(n2.flaxd_health(), linen_lab::flaxd::Health::Healthy);

    // Paused past the TTL: peers drop n2 after the TTL; after SIGCONT it is back.
    let pid = n2.flaxd_running().expect("n2's flaxd");
    let stopped = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP).unwrap();
    let n1_ = n1.clone();
    eventually("n1 to drop paused n2", Duration::from_secs(20), || {
        (!remotes_of(&n1_).contains(&ip2)).then_some(())
    });
    let dropped = stopped.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let resumed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGCONT).unwrap();
    for node in state.nodes.iter().filter(|n| n.index != 2) {
        eventually(
            format!("{} to have n2 back", node.name),
            Duration::from_secs(20),
            || remotes_of(node).contains(&ip2).then_some(()),
        );
    }
    let back = resumed.elapsed();
    pings_pass(&state);
    eprintln!(
        "SIGSTOP n2's flaxd: peers dropped it after {:.1}s (TTL {TTL}s); after SIGCONT back on every peer in {:.2}s",
        dropped.as_secs_f64(),
        back.as_secs_f64()
    );
    assert!(
        dropped >= Duration::from_secs(u64::from(TTL) - 1),
        "{dropped:?}"
    );
    assert!(back < Duration::from_secs(5), "{back:?}");
    assert_eq!(
        n2.flaxd_running(),
        Some(pid),
        "the same flaxd, not a restart"
    );

    cluster.down().expect("down");
    assert_nothing_left(&lab);
}

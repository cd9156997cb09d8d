//! A real lab on the real kernel with real OVS: needs root and the system
//! tools (see `linen_lab::preflight`). Every test has its own lab name and
//! directory, so they run in parallel; every address lives only inside the
//! namespaces the lab creates.

mod common;

use std::process::Command;

use common::{TestLab, alive_in, ovs_pids, run};
use linen_lab::cluster::Error as ClusterError;
use linen_lab::{Cluster, Error, Owner, Role, Topology};

#[test]
fn three_nodes_answer_ping_each_other_and_go_away() {
    let lab = TestLab::new();
    let mut cluster = Cluster::up(lab.spec(3)).expect("up");
    assert_eq!(cluster.nodes().len(), 3);

    let mut pids = Vec::new();
    for node in cluster.nodes() {
        assert!(node.netns_path.exists(), "{}", node.netns_path.display());
        assert!(node.ovsdb_socket.exists());
        assert_eq!(node.underlay_mtu, 1500);
        assert_eq!(node.role, Role::Peer);
        // ovsdb-server answers on the recorded socket...
        let db = format!("--db=unix:{}", node.ovsdb_socket.display());
        let dp =
            run(Command::new("ovs-vsctl").args([&db, "get", "Bridge", "br-phy", "datapath_type"]));
        assert_eq!(dp.trim(), "netdev");
        let tag = run(Command::new("ovs-vsctl").args([
            &db,
            "get",
            "Port",
            "eth0",
            "external_ids:linen-lab",
        ]));
        assert_eq!(tag.trim().trim_matches('"'), lab.name);
        // ...and OVS_RUNDIR alone (as `linen-lab exec` sets it) reaches both daemons.
        run(node
            .command("ovs-appctl")
            .args(["-t", "ovs-vswitchd", "version"]));
        run(node
            .command("ovs-appctl")
            .args(["-t", "ovsdb-server", "version"]));
        let show = run(node.command("ovs-vsctl").arg("show"));
        assert!(show.contains("br-phy") && show.contains("eth0"), "{show}");
        // The underlay address sits on br-phy, not on eth0.
        let addrs = run(&mut node.netns.ip(["-4", "-o", "addr", "show"]));
        let on_phy = format!("br-phy    inet {}", node.underlay_ip);
        assert!(addrs.contains(&on_phy), "{addrs}");
        pids.extend(ovs_pids(node));
    }
    for pid in &pids {
        assert!(alive_in(*pid, &lab.dir()));
    }

    for from in cluster.nodes() {
        for to in cluster.nodes().iter().filter(|n| n.index != from.index) {
            let ip = to.underlay_ip.addr().to_string();
            let route = run(&mut from.netns.ip(["route", "get", &ip]));
            assert!(route.contains("dev br-phy"), "{route}");
            run(from.netns.command("ping").args(["-c1", "-W1", &ip]));
        }
    }

    cluster.down().expect("down");
    lab.assert_gone(&pids);
    cluster.down().expect("down twice");
    linen_lab::down(&lab.name, &lab.dir()).expect("down by name after down");
    lab.assert_gone(&pids);
}

#[test]
fn up_of_a_running_lab_is_a_clear_error() {
    let lab = TestLab::new();
    let cluster = Cluster::up(lab.spec(1)).expect("up");

    // Owned by a live value in this process: busy.
    let err = Cluster::up(lab.spec(1)).expect_err("second up while owned");
    assert!(
        matches!(err, Error::Cluster(ClusterError::Busy { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );

    // Detached, as the CLI leaves it: already running.
    let state = cluster.detach().expect("detach");
    assert_eq!(state.owner, Owner::Detached);
    let err = Cluster::up(lab.spec(1)).expect_err("second up while detached");
    assert!(
        matches!(err, Error::Cluster(ClusterError::AlreadyRunning { .. })),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("already running") && msg.contains("linen-lab down"),
        "{msg}"
    );

    let pids = ovs_pids(&state.nodes[0]);
    linen_lab::down(&lab.name, &lab.dir()).expect("down");
    lab.assert_gone(&pids);
    linen_lab::down(&lab.name, &lab.dir()).expect("down twice");
}

/// Run only as a child of `crashed_lab_is_cleaned_by_next_up`: brings a lab
/// up and exits without running any destructor, as a crash would.
#[test]
#[ignore = "helper process for crashed_lab_is_cleaned_by_next_up"]
fn crash_child() {
    let (Ok(name), Ok(dir)) = (
        std::env::var("LINEN_LAB_CRASH_NAME"),
        std::env::var("LINEN_LAB_CRASH_DIR"),
    ) else {
        panic!("run only as a child of crashed_lab_is_cleaned_by_next_up (no LINEN_LAB_CRASH_*)");
    };
    let spec = linen_lab::ClusterSpec {
        dir: Some(dir.into()),
        ..linen_lab::ClusterSpec::new(name, 2)
    };
    let _cluster = Cluster::up(spec).expect("up in child");
    std::process::exit(17);
}

#[test]
fn crashed_lab_is_cleaned_by_next_up() {
    let lab = TestLab::new();
    // Its output is captured so its test-harness lines do not mix with ours.
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .env("LINEN_LAB_CRASH_NAME", &lab.name)
        .env("LINEN_LAB_CRASH_DIR", lab.dir())
        .output()
        .expect("run child");
    assert_eq!(
        child.status.code(),
        Some(17),
        "child did not reach its crash: {}",
        String::from_utf8_lossy(&child.stderr)
    );

    // The crash left everything behind, owned by a dead process.
    let state = linen_lab::load(&lab.dir())
        .expect("load")
        .expect("state left");
    assert!(matches!(state.owner, Owner::Process { .. }));
    // The child's spec has 2 pods per node: 2 nodes, 4 pods, the underlay.
    assert_eq!(state.pods.len(), 4);
    assert_eq!(lab.namespaces().len(), 7, "{:?}", lab.namespaces());
    let old_pids: Vec<i32> = state.nodes.iter().flat_map(ovs_pids).collect();
    for pid in &old_pids {
        assert!(alive_in(*pid, &lab.dir()), "crash should leave OVS running");
    }
    // Stray namespaces with the lab's naming, e.g. from an even older run.
    let stray = linen_lab::Netns::ensure(format!("{}-n9", lab.name)).expect("stray netns");
    let stray_pod = linen_lab::Netns::ensure(format!("{}-n9-p3", lab.name)).expect("stray pod");

    let mut cluster = Cluster::up(lab.spec(2)).expect("up after crash");
    for pid in &old_pids {
        assert!(!alive_in(*pid, &lab.dir()), "old OVS {pid} survived");
    }
    assert!(!stray.exists(), "stray namespace survived");
    assert!(!stray_pod.exists(), "stray pod namespace survived");
    assert_eq!(lab.namespaces().len(), 3, "{:?}", lab.namespaces());
    cluster.verify_underlay().expect("new lab works");
    let pids: Vec<i32> = cluster.nodes().iter().flat_map(ovs_pids).collect();
    cluster.down().expect("down");
    lab.assert_gone(&pids);
}

#[test]
fn detached_lab_with_a_dead_daemon_is_rebuilt_and_drop_cleans_up() {
    let lab = TestLab::new();
    let spec = linen_lab::ClusterSpec {
        topology: Topology::Hub,
        ..lab.spec(2)
    };
    let state = Cluster::up(spec.clone())
        .expect("up")
        .detach()
        .expect("detach");
    let roles: Vec<Role> = state.nodes.iter().map(|n| n.role).collect();
    assert_eq!(roles, [Role::Hub, Role::Spoke]);

    // ovs-vswitchd of node 2 dies: the lab is broken, not running.
    let victim = state.nodes[1]
        .ovs()
        .pid(linen_lab::Daemon::Vswitchd)
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::SIGKILL,
    )
    .expect("kill");
    linen_lab::wait::until("vswitchd to die", std::time::Duration::from_secs(5), || {
        (!alive_in(victim, &lab.dir())).then_some(())
    })
    .expect("vswitchd dies");
    let old_pids: Vec<i32> = state.nodes.iter().flat_map(ovs_pids).collect();

    let cluster = Cluster::up(spec).expect("up over a broken lab");
    let pids: Vec<i32> = cluster.nodes().iter().flat_map(ovs_pids).collect();
    assert!(pids.iter().all(|p| !old_pids.contains(p)));
    drop(cluster);
    lab.assert_gone(&[pids, old_pids].concat());
}

//! Changing a running lab from other processes, through the CLI (root):
//! pods and nodes come and go, tunnels follow, pings keep passing; and bad
//! use gets a clear message, never a panic.

mod common;

use common::{TestLab, assert_nothing_left, fails, lab_cli, lab_cli_env, ok};
use linen_lab::{LabState, Tunnels};

fn state(lab: &TestLab) -> LabState {
    linen_lab::load(&lab.dir()).unwrap().expect("state")
}

/// Remote VTEPs of node `node`'s tunnels, as OVSDB shows them.
fn remotes(lab: &TestLab, node: &str) -> Vec<String> {
    let (_, nodes) = linen_lab::status(&lab.dir()).unwrap().expect("status");
    let n = nodes
        .iter()
        .find(|n| n.node.name == format!("{}-{node}", lab.name))
        .unwrap_or_else(|| panic!("no node {node}"));
    match &n.tunnels {
        Tunnels::Ports(ports) => ports.iter().map(|t| t.remote.to_string()).collect(),
        other => panic!("{node}: {other:?}"),
    }
}

/// Static membership: the lab rewrites conflists and re-applies them (the
/// etcd + flaxd path is `flaxd_*.rs`).
#[test]
fn pods_and_nodes_come_and_go() {
    let lab = TestLab::new();
    ok(&lab_cli(
        &lab,
        &[
            "up",
            "--nodes",
            "2",
            "--pods-per-node",
            "1",
            "--membership",
            "static",
        ],
    ));
    assert_eq!(remotes(&lab, "n1"), ["10.245.2.2"]);

    // add-pod: a second pod on n1, through CNI ADD in this other process.
    let added = ok(&lab_cli(&lab, &["add-pod", "n1"]));
    assert!(added.contains(&format!("{}-n1-p2", lab.name)), "{added}");
    assert!(added.contains("10.244.1.3/16"), "{added}");
    let p2 = state(&lab).pod("n1-p2").cloned().expect("recorded");
    assert!(p2.netns.exists());
    ok(&lab_cli(&lab, &["ping"]));

    // del-pod: DEL, namespace gone, forgotten; a second time is a clear error.
    let p1 = state(&lab).pod("n1-p1").cloned().expect("p1");
    ok(&lab_cli(&lab, &["del-pod", "n1-p1"]));
    assert!(!p1.netns.exists());
    assert!(state(&lab).pod("n1-p1").is_none());
    let err = fails(&lab_cli(&lab, &["del-pod", "n1-p1"]));
    assert!(
        err.contains("has no pod n1-p1") && err.contains("n1-p2"),
        "{err}"
    );
    // host-local released the address on DEL (its lease file is gone), while
    // the other pod's lease stays.
    let leases = state(&lab).node("n1").unwrap().ipam_dir().join("linen-lab");
    assert!(!leases.join("10.244.1.2").exists());
    assert!(leases.join("10.244.1.3").exists());
    let again = ok(&lab_cli(&lab, &["add-pod", "1"]));
    assert!(again.contains(&format!("{}-n1-p3", lab.name)), "{again}");

    // exec reaches pods as well as nodes.
    let addr = ok(&lab_cli(
        &lab,
        &[
            "exec", "n1-p2", "--", "ip", "-4", "-o", "addr", "show", "eth0",
        ],
    ));
    assert!(addr.contains("10.244.1.3/16"), "{addr}");

    // add-node: n3 joins with a pod; n1 and n2 get a tunnel to it at once.
    let joined = ok(&lab_cli(&lab, &["add-node", "--pods", "1"]));
    assert!(joined.contains(&format!("{}-n3-p1", lab.name)), "{joined}");
    assert_eq!(remotes(&lab, "n1"), ["10.245.2.2", "10.245.2.3"]);
    assert_eq!(remotes(&lab, "n2"), ["10.245.2.1", "10.245.2.3"]);
    assert_eq!(remotes(&lab, "n3"), ["10.245.2.1", "10.245.2.2"]);
    let conf = std::fs::read_to_string(state(&lab).node("n1").unwrap().conflist_path()).unwrap();
    assert!(conf.contains("10.245.2.3"), "{conf}");
    let matrix = ok(&lab_cli(&lab, &["ping"]));
    assert!(matrix.contains("n3-p1"), "{matrix}");

    // del-node: n2 leaves with its pod; the others drop their tunnel to it.
    let n2 = state(&lab).node("n2").cloned().unwrap();
    let n2_pods: Vec<_> = state(&lab).pods_on(2).cloned().collect();
    ok(&lab_cli(&lab, &["del-node", "n2"]));
    assert!(!n2.netns.exists());
    assert!(n2_pods.iter().all(|p| !p.netns.exists()));
    assert!(!n2.run_dir.exists());
    assert_eq!(remotes(&lab, "n1"), ["10.245.2.3"]);
    assert_eq!(remotes(&lab, "n3"), ["10.245.2.1"]);
    ok(&lab_cli(&lab, &["ping"]));
    let status = ok(&lab_cli(&lab, &["status"]));
    assert!(!status.contains(&format!("{}-n2", lab.name)), "{status}");

    ok(&lab_cli(&lab, &["down"]));
    lab.assert_gone(&[]);
    assert_nothing_left(&lab);
}

#[test]
fn bad_use_gets_a_clear_message() {
    let lab = TestLab::new();
    // Before the lab exists.
    for args in [
        &["ping"][..],
        &["status"],
        &["add-pod", "n1"],
        &["exec", "n1", "--", "true"],
    ] {
        let out = lab_cli(&lab, args);
        if args[0] == "status" {
            assert!(ok(&out).contains("not running"));
        } else {
            let err = fails(&out);
            assert!(
                err.contains("not running") && err.contains("linen-lab up"),
                "{args:?}: {err}"
            );
        }
    }
    // Missing linen: refused before anything is created.
    let err = fails(&lab_cli_env(
        &lab,
        &["up", "--nodes", "1"],
        &[("LINEN_BIN_DIR", "/nonexistent")],
    ));
    assert!(
        err.contains("cargo build") && err.contains("LINEN_BIN_DIR"),
        "{err}"
    );
    assert!(lab.namespaces().is_empty());
    // Missing system tools: named, with their packages and the install script.
    let err = fails(&lab_cli_env(
        &lab,
        &["up", "--nodes", "1"],
        &[("PATH", "/nonexistent")],
    ));
    assert!(
        err.contains("ovs-vswitchd")
            && err.contains("openvswitch-switch")
            && err.contains("./scripts/install-deps.sh"),
        "{err}"
    );
    // Not root (setpriv is util-linux's, present wherever `ip netns` is).
    let not_root = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_linen-lab"))
        .args(["up", "--nodes", "1", "--name", &lab.name, "--dir"])
        .arg(lab.dir())
        .output()
        .expect("setpriv");
    let err = fails(&not_root);
    assert!(err.contains("must run as root"), "{err}");
    // Bad arguments: a usage error, not a panic.
    let err = fails(&lab_cli(&lab, &["up", "--nodes", "0"]));
    assert!(err.contains("1 to 253 nodes, not 0"), "{err}");
    let err = fails(&lab_cli(
        &lab,
        &["up", "--nodes", "0", "--membership", "static"],
    ));
    assert!(err.contains("1 to 254 nodes, not 0"), "{err}");
    let err = fails(&lab_cli(&lab, &["up", "--topology", "ring"]));
    assert!(err.contains("invalid value 'ring'"), "{err}");

    ok(&lab_cli(
        &lab,
        &[
            "up",
            "--nodes",
            "2",
            "--pods-per-node",
            "1",
            "--topology",
            "hub",
        ],
    ));
    let err = fails(&lab_cli(&lab, &["up", "--nodes", "2"]));
    assert!(
        err.contains("already running") && err.contains("linen-lab down"),
        "{err}"
    );
    let err = fails(&lab_cli(&lab, &["del-pod", "n7-p1"]));
    assert!(err.contains("has no pod n7-p1"), "{err}");
    let err = fails(&lab_cli(&lab, &["add-pod", "n9"]));
    assert!(err.contains("has no node n9"), "{err}");
    let err = fails(&lab_cli(&lab, &["del-node", "n1"]));
    assert!(err.contains("is the hub"), "{err}");
    let err = fails(&lab_cli(&lab, &["exec", "nope", "--", "true"]));
    assert!(err.contains("no node or pod nope"), "{err}");
    let err = fails(&lab_cli_env(
        &lab,
        &["add-pod", "n2"],
        &[("LINEN_BIN_DIR", "/nonexistent")],
    ));
    assert!(err.contains("cargo build"), "{err}");
    assert!(
        state(&lab).pod("n2-p2").is_none(),
        "a refused pod is not recorded"
    );
    ok(&lab_cli(&lab, &["del-node", "n2"]));
    let err = fails(&lab_cli(&lab, &["del-node", "n1"]));
    assert!(
        err.contains("is the hub") || err.contains("last node"),
        "{err}"
    );
    ok(&lab_cli(&lab, &["down"]));
    assert_nothing_left(&lab);
}

//! The `linen-lab` binary end to end (root): up, status, exec, down twice.

mod common;

use common::{TestLab, fails, lab_cli, ok, ovs_pids};

#[test]
fn up_status_exec_down() {
    let lab = TestLab::new();
    ok(&lab_cli(
        &lab,
        &["up", "--nodes", "2", "--pods-per-node", "0"],
    ));

    let status = ok(&lab_cli(&lab, &["status"]));
    for node in ["n1", "n2"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{}-{node}", lab.name)))
            .unwrap_or_else(|| panic!("no {node} in:\n{status}"));
        assert!(line.contains("/var/run/netns/"), "{line}");
        assert!(!line.contains("dead"), "{line}");
    }
    assert!(status.contains("10.245.2.2/24"), "{status}");

    // exec reaches the node's own OVS through OVS_RUNDIR, and runs in its namespace.
    let show = ok(&lab_cli(&lab, &["exec", "n2", "--", "ovs-vsctl", "show"]));
    assert!(show.contains("br-phy"), "{show}");
    ok(&lab_cli(
        &lab,
        &["exec", "n2", "--", "ovs-appctl", "version"],
    ));
    let addr = ok(&lab_cli(&lab, &["exec", "n2", "--", "ip", "-4", "addr"]));
    assert!(addr.contains("10.245.2.2/24"), "{addr}");
    // The command's exit status comes back.
    let code = lab_cli(&lab, &["exec", "n1", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code.status.code(), Some(3));

    let again = fails(&lab_cli(&lab, &["up", "--nodes", "2"]));
    assert!(again.contains("already running"), "{again}");

    // Every OVS daemon of every node, to prove `down` stopped them.
    let state = linen_lab::load(&lab.dir()).expect("load").expect("state");
    let pids: Vec<i32> = state.nodes.iter().flat_map(ovs_pids).collect();
    assert_eq!(pids.len(), 4, "two daemons on each of two nodes: {pids:?}");
    ok(&lab_cli(&lab, &["down"]));
    ok(&lab_cli(&lab, &["down"]));
    lab.assert_gone(&pids);
    let status = ok(&lab_cli(&lab, &["status"]));
    assert!(status.contains("not running"), "{status}");
}

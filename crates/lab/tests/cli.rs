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

/// The inode of network namespace `name` (`/var/run/netns/NAME`), to find processes still
/// in it after its name is gone.
fn netns_inode(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("netns {name}: {e}"))
        .ino()
}

/// Pids of processes whose network namespace is one of `inodes`.
fn processes_in(inodes: &[u64]) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if inodes.iter().any(|i| link == format!("net:[{i}]")) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_owned()));
        }
    }
    found
}

#[test]
fn an_interrupted_demo_tears_its_lab_down() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let lab = TestLab::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_linen-lab"))
        .args(["demo", "--name", &lab.name, "--dir"])
        .arg(lab.dir())
        .args(["--nodes", "2", "--pods-per-node", "1", "--seconds", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start linen-lab demo");
    // Interrupt it during the iperf3 transfer: a server and a client run in pod
    // namespaces then, besides etcd, a flaxd and OVS per node.
    // Its output is read to the end on a thread (a closed pipe would fail the demo).
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}: the demo said:\n{}", seen.join("\n")));
        let at_transfer = line.contains("TCP across the overlay");
        seen.push(line);
        if at_transfer {
            break;
        }
    }
    let state = linen_lab::load(&lab.dir())
        .expect("load")
        .unwrap_or_else(|| panic!("no lab state; demo said:\n{}", seen.join("\n")));
    let inodes: Vec<u64> = state
        .pods
        .iter()
        .map(|p| p.netns.name().to_owned())
        .chain(state.nodes.iter().map(|n| n.netns.name().to_owned()))
        .map(|n| netns_inode(&n))
        .collect();
    let daemons: Vec<i32> = state
        .nodes
        .iter()
        .flat_map(common::ovs_pids)
        .chain(state.nodes.iter().filter_map(|n| n.flaxd_pid))
        .collect();
    // iperf3 is running in a pod namespace (the case that used to be left spinning).
    testkit::eventually("iperf3 in a pod namespace", Duration::from_secs(10), || {
        processes_in(&inodes)
            .iter()
            .any(|(_, comm)| comm == "iperf3")
            .then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        let _ = tx.send(s);
    });
    let status = testkit::eventually("the demo to exit", Duration::from_secs(60), || {
        child.try_wait().unwrap()
    });
    let stderr = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "128 + SIGINT; stderr:\n{stderr}");
    assert!(stderr.contains("tearing lab"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lab.assert_gone(&daemons);
    assert_eq!(
        processes_in(&inodes),
        vec![],
        "processes left in the lab's (now unnamed) namespaces"
    );
}

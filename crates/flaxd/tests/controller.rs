//! The seed's OpenFlow controller with flaxd managing the node (root; real OVS, and a real
//! controller: Debian's `ovs-testcontroller`, a learning switch, in the node's namespace).
//! flaxd points the bridge at it, the bridge connects, survives the controller's death
//! (fail_mode=standalone) and reconnects when it returns; the metrics follow; the conflist
//! flaxd writes carries the same controller, so the plugin plans no change to the row.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;

use common::{LONG, Node, eventually, free_port, init_logs, program, run, write_peers};

const MESH: &[(&str, &str)] = &[("a", "192.0.2.1"), ("b", "192.0.2.2")];

/// `ovs-testcontroller` listening on 127.0.0.1:`port` inside `netns`; killed on drop.
struct TestController {
    child: Child,
    _dir: tempfile::TempDir,
}

impl TestController {
    fn start(netns: &str, port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flaxd-ctl-")
            .tempdir()
            .unwrap();
        let child = Command::new(program("ip"))
            .args(["netns", "exec", netns, "ovs-testcontroller"])
            .arg(format!("ptcp:{port}:127.0.0.1"))
            // Without --unixctl it tries /var/run/openvswitch.
            .arg(format!(
                "--unixctl={}",
                dir.path().join("ctl.ctl").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovs-testcontroller (installed by scripts/install-deps.sh)");
        TestController { child, _dir: dir }
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaxd_points_the_bridge_at_a_real_controller_that_can_die_and_return() {
    init_logs();
    let a = Node::new("a", "192.0.2.1");
    run(Command::new(program("ip")).args(["-n", a.ovs.netns(), "link", "set", "lo", "up"]));
    let port = free_port();
    let target = format!("tcp:127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(&peers, MESH);
    let mut cfg = a.config();
    cfg.controllers = vec![target.clone()];
    // A pod subnet, so flaxd writes the conflist.
    cfg.pod_cidr = Some("10.244.1.0/24".parse().unwrap());
    let controller = TestController::start(a.ovs.netns(), port);
    let d = a.start_file(&peers, cfg).await;
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;

    let connected = |want: bool| {
        let m = d.metrics();
        let ovs = &a.ovs;
        let target = target.clone();
        async move {
            let row = ovs.vsctl(&["--columns=target,is_connected", "list", "Controller"]);
            let up = row.contains(&format!("\"{target}\""))
                && row.contains("is_connected        : true");
            let count = m.controllers_connected.load(Ordering::Relaxed);
            (up == want && count == u64::from(want) && m.controllers.load(Ordering::Relaxed) == 1)
                .then_some(())
        }
    };
    eventually("the bridge to connect to the controller", LONG, || {
        connected(true)
    })
    .await;
    assert_eq!(a.ovs.vsctl(&["get-controller", "br0"]).trim(), target);
    assert_eq!(
        a.ovs.vsctl(&["get", "Bridge", "br0", "fail_mode"]).trim(),
        "standalone"
    );
    let owner = a
        .ovs
        .vsctl(&["--columns=external_ids", "list", "Controller"]);
    assert!(owner.contains("linen-owner"), "{owner}");

    // The conflist carries the same controller: the plugin reads it and plans nothing.
    eventually("the conflist", LONG, || async {
        a.conflist.exists().then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&a.conflist).unwrap();
    let conf: serde_json::Value = serde_json::from_str(&text).unwrap();
    let plugin = flaxd::linen::config::LinenConfig::from_json(&conf["plugins"][1]).unwrap();
    assert_eq!(
        plugin.bridge_spec().controllers,
        std::slice::from_ref(&target)
    );

    // The controller dies: the bridge stays, standalone, and reports it.
    drop(controller);
    eventually("the bridge to see the controller gone", LONG, || {
        connected(false)
    })
    .await;
    assert_eq!(
        a.ovs.vsctl(&["get-controller", "br0"]).trim(),
        target,
        "the row stays"
    );

    // It comes back: the bridge reconnects by itself; flaxd needed to change nothing.
    let reconciles = d.metrics().reconciles.load(Ordering::Relaxed);
    let _controller = TestController::start(a.ovs.netns(), port);
    eventually("the bridge to reconnect", LONG, || connected(true)).await;
    let uuid = a.ovs.vsctl(&["--columns=_uuid", "list", "Controller"]);
    assert_eq!(uuid.lines().count(), 1, "still one Controller row: {uuid}");
    // Connection changes alone do not make flaxd reconcile.
    assert_eq!(d.metrics().reconciles.load(Ordering::Relaxed), reconciles);

    // A row that someone else (an operator) adds stays; Linen's is kept as is.
    a.ovs.vsctl(&[
        "--",
        "--id=@c",
        "create",
        "Controller",
        "target=\"tcp:127.0.0.1:1\"",
        "--",
        "add",
        "Bridge",
        "br0",
        "controller",
        "@c",
    ]);
    eventually("flaxd to leave the foreign row alone", LONG, || async {
        let all = a.ovs.vsctl(&["get-controller", "br0"]);
        (all.contains("tcp:127.0.0.1:1") && all.contains(&target)).then_some(())
    })
    .await;
    d.shutdown().await.unwrap();
}

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
        Self::start_with(netns, &format!("ptcp:{port}:127.0.0.1"), &[])
    }

    /// Listening on `listen` (`ptcp:` or `pssl:`), with extra options (SSL files).
    fn start_with(netns: &str, listen: &str, extra: &[String]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&testkit::name("flaxd-ctl-"))
            .tempdir()
            .unwrap();
        let mut cmd = Command::new(program("ip"));
        cmd.args(["netns", "exec", netns, "ovs-testcontroller"])
            .arg(listen)
            .args(extra)
            // Without --unixctl it tries /var/run/openvswitch.
            .arg(format!(
                "--unixctl={}",
                dir.path().join("ctl.ctl").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Dies with the test process, however it ends.
        let child = testkit::process::spawn(cmd)
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
    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(&peers, MESH);
    let mut cfg = a.config();
    cfg.controllers = vec![target.clone()];
    // A pod subnet, so flaxd writes the conflist.
    cfg.pod_cidrs = vec!["10.244.1.0/24".parse().unwrap()];
    let controller = TestController::start(a.ovs.netns(), port);
    let started = std::time::Instant::now();
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
    // A figure for the reader, not a bound.
    println!(
        "flaxd started -> bridge connected: {:.1}s",
        started.elapsed().as_secs_f64()
    );
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
    let back = std::time::Instant::now();
    eventually("the bridge to reconnect", LONG, || connected(true)).await;
    // A figure for the reader (OVS's reconnection backoff), not a bound.
    println!(
        "controller back -> reconnected: {:.1}s",
        back.elapsed().as_secs_f64()
    );
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

/// A CA, and a key and certificate it signed for each of `names`, in `dir` (openssl).
fn pki(dir: &std::path::Path, names: &[&str]) {
    let openssl = |args: &[&str]| {
        run(Command::new("openssl").current_dir(dir).args(args));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=linen-test-ca",
        "-days",
        "1",
    ]);
    for name in names {
        let (key, csr, cert) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}-cert.pem"),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "1",
        ]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssl_controller_connects_with_the_keys_flaxd_gives_ovs() {
    init_logs();
    let a = Node::new("a", "192.0.2.1");
    run(Command::new(program("ip")).args(["-n", a.ovs.netns(), "link", "set", "lo", "up"]));
    let pki_dir = tempfile::Builder::new()
        .prefix(&testkit::name("flaxd-pki-"))
        .tempdir()
        .unwrap();
    pki(pki_dir.path(), &["switch", "controller", "stranger"]);
    let file = |f: &str| pki_dir.path().join(f).display().to_string();
    let port = free_port();
    let target = format!("ssl:127.0.0.1:{port}");
    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(&peers, MESH);
    let mut cfg = a.config();
    cfg.controllers = vec![target.clone()];
    cfg.ssl = Some(flaxd::linen::model::SslSpec {
        private_key: file("switch-key.pem"),
        certificate: file("switch-cert.pem"),
        ca_cert: file("ca.pem"),
    });
    let pssl = |dir: &std::path::Path| {
        TestController::start_with(
            a.ovs.netns(),
            &format!("pssl:{port}:127.0.0.1"),
            &[
                format!("--private-key={}", dir.join("controller-key.pem").display()),
                format!(
                    "--certificate={}",
                    dir.join("controller-cert.pem").display()
                ),
                format!("--ca-cert={}", dir.join("ca.pem").display()),
            ],
        )
    };
    let controller = TestController::start_with(
        a.ovs.netns(),
        &format!("pssl:{port}:127.0.0.1"),
        &[
            format!("--private-key={}", file("controller-key.pem")),
            format!("--certificate={}", file("controller-cert.pem")),
            format!("--ca-cert={}", file("ca.pem")),
        ],
    );
    let d = a.start_file(&peers, cfg).await;
    eventually("the bridge to connect over SSL", LONG, || async {
        let m = d.metrics();
        (m.controllers_connected.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    // The SSL row is flaxd's, with the files it was given.
    let ssl = a.ovs.vsctl(&[
        "--columns=private_key,certificate,ca_cert,external_ids",
        "list",
        "SSL",
    ]);
    assert!(
        ssl.contains(&file("switch-key.pem")) && ssl.contains("linen-owner"),
        "{ssl}"
    );
    d.shutdown().await.unwrap();

    // A switch key the controller's CA did not sign: flaxd writes it, and the controller
    // refuses the connection (the check is real, not a formality).
    let other = tempfile::Builder::new()
        .prefix(&testkit::name("flaxd-pki-"))
        .tempdir()
        .unwrap();
    pki(other.path(), &["switch"]);
    let mut cfg = a.config();
    cfg.controllers = vec![target.clone()];
    cfg.ssl = Some(flaxd::linen::model::SslSpec {
        private_key: other.path().join("switch-key.pem").display().to_string(),
        certificate: other.path().join("switch-cert.pem").display().to_string(),
        ca_cert: file("ca.pem"),
    });
    let d = a.start_file(&peers, cfg).await;
    eventually("flaxd to replace its SSL row", LONG, || async {
        a.ovs
            .vsctl(&["--columns=private_key", "list", "SSL"])
            .contains(&other.path().display().to_string())
            .then_some(())
    })
    .await;
    // A new connection (the controller restarts) must use the new key: refused, and OVS
    // says why.
    drop(controller);
    let _controller = pssl(pki_dir.path());
    eventually("the controller to refuse the stranger", LONG, || async {
        let status = a.ovs.vsctl(&["--columns=status", "list", "Controller"]);
        (d.metrics().controllers_connected.load(Ordering::Relaxed) == 0
            && status.contains("last_error"))
        .then_some(())
    })
    .await;
    d.shutdown().await.unwrap();

    // An SSL row Linen did not create is never touched: flaxd reports it instead.
    a.ovs.vsctl(&["del-ssl"]);
    a.ovs.vsctl(&[
        "set-ssl",
        "/nonexistent/key.pem",
        "/nonexistent/cert.pem",
        "/nonexistent/ca.pem",
    ]);
    let mut cfg = a.config();
    cfg.ssl = Some(flaxd::linen::model::SslSpec {
        private_key: file("switch-key.pem"),
        certificate: file("switch-cert.pem"),
        ca_cert: file("ca.pem"),
    });
    let d = a.start_file(&peers, cfg).await;
    eventually("flaxd to report the foreign SSL row", LONG, || async {
        d.metrics()
            .health()
            .err()
            .filter(|e| e.contains("SSL row Linen did not create"))
    })
    .await;
    assert!(a.ovs.vsctl(&["get-ssl"]).contains("/nonexistent/key.pem"));
    d.shutdown().await.unwrap();
}

//! flaxd with the static-file source and a real Open vSwitch: the tunnels follow the file
//! through atomic replacement, in-place edits and a broken version. VTEPs are TEST-NET-1
//! addresses that no packet is ever sent to.

mod common;

use std::sync::atomic::Ordering;

use common::{LONG, Node, eventually, init_logs, write_peers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_follow_the_peer_file() {
    init_logs();
    let a = Node::new("a", "192.0.2.1");
    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(
        &peers,
        &[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")],
    );
    let mut cfg = a.config();
    cfg.policy.hub = true;
    cfg.pod_cidrs = vec!["10.244.1.0/24".parse().unwrap()];
    let d = a.start_file(&peers, cfg).await;
    let t = a
        .ovs
        .await_tunnels(&[("b", "192.0.2.2"), ("c", "192.0.2.3")])
        .await;
    assert!(t.values().all(|p| !p.protected), "a hub's tunnels relay");
    assert_eq!(a.await_conflist_subnet().await, "10.244.1.1");

    // Replaced by rename: c leaves, d joins.
    write_peers(
        &peers,
        &[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("d", "192.0.2.4")],
    );
    a.ovs
        .await_tunnels(&[("b", "192.0.2.2"), ("d", "192.0.2.4")])
        .await;

    // A broken file changes nothing (the last good membership stays)...
    std::fs::write(&peers, "- name: b\n  vtep: [not an address\n").unwrap();
    // A pass has seen it: reconcile_once records the source as disconnected first thing.
    eventually("a pass over the broken file", LONG, || async {
        (!d.metrics().source_connected.load(Ordering::Relaxed)).then_some(())
    })
    .await;
    // That pass may still be running: poke OVS (a foreign port, which flaxd leaves alone),
    // so a pass completes after this point, and only then look.
    let passes = d.metrics().reconciles.load(Ordering::Relaxed);
    a.ovs.vsctl(&[
        "add-port",
        "br0",
        "poke",
        "--",
        "set",
        "Interface",
        "poke",
        "type=internal",
    ]);
    eventually("a completed pass after the broken file", LONG, || async {
        (d.metrics().reconciles.load(Ordering::Relaxed) > passes).then_some(())
    })
    .await;
    assert!(!d.members().borrow().connected);
    let remotes: Vec<String> = a
        .ovs
        .tunnels()
        .await
        .keys()
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(
        remotes,
        ["192.0.2.2", "192.0.2.4"],
        "the last good membership stays"
    );

    // ...and an edit in place (JSON this time) is followed.
    std::fs::write(&peers, r#"[{"name": "e", "vtep": "192.0.2.5"}]"#).unwrap();
    a.ovs.await_tunnels(&[("e", "192.0.2.5")]).await;
    assert!(d.members().borrow().connected);
    d.shutdown().await.unwrap();
}

/// A tmpfs of `size` mounted on `dir` for the test, unmounted when dropped (and, if the
/// test process is killed, by scripts/sweep-test-leftovers.sh: `dir` carries the lnt prefix).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        common::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "lnt-full"])
                .arg(dir),
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The conflist's directory is full (a 64 KiB tmpfs filled up): flaxd still lays the
/// tunnels, leaves no partial conflist and no temporary file, says why on /healthz, and
/// writes the conflist as soon as there is room, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_conflist_directory_fails_cleanly_and_heals() {
    use std::io::Write as _;
    init_logs();
    let a = Node::new("a", "192.0.2.1");
    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(&peers, &[("a", "192.0.2.1"), ("b", "192.0.2.2")]);
    let netd = dir.path().join("net.d");
    std::fs::create_dir(&netd).unwrap();
    let _tmpfs = Tmpfs::mount(&netd, "64k");
    let filler = netd.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        let full = loop {
            if let Err(e) = f.write_all(&block) {
                break e;
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    }
    let mut cfg = a.config();
    cfg.pod_cidrs = vec!["10.244.1.0/24".parse().unwrap()];
    let conflist = netd.join("10-linen.conflist");
    cfg.conflist.as_mut().unwrap().path = conflist.clone();
    let d = a.start_file(&peers, cfg).await;

    // OVS first: the tunnels are there though the conflist cannot be written.
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    let why = eventually("flaxd to report the full disk", LONG, || async {
        d.metrics()
            .health()
            .err()
            .filter(|e| e.contains("conflist"))
    })
    .await;
    assert!(why.contains("No space left"), "{why}");
    assert!(d.metrics().reconcile_errors.load(Ordering::Relaxed) > 0);
    let names = || -> Vec<String> {
        std::fs::read_dir(&netd)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(),
        ["filler"],
        "no partial conflist, no temporary file"
    );

    // Room again: the retry writes it, and flaxd is healthy.
    std::fs::remove_file(&filler).unwrap();
    let healed = std::time::Instant::now();
    eventually("the conflist after the disk has room", LONG, || async {
        (conflist.exists() && d.metrics().health().is_ok()).then_some(())
    })
    .await;
    eprintln!(
        "conflist written {:.1}s after space was freed",
        healed.elapsed().as_secs_f64()
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(
        v["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
        "10.244.1.1"
    );
    assert_eq!(names(), ["10-linen.conflist"]);
    d.shutdown().await.unwrap();
}

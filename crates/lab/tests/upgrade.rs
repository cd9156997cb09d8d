//! Rolling upgrades lose no packets (root; real etcd, a real flaxd process
//! per node, real OVS, real packets): a continuous ping between pods of
//! different nodes runs across a flaxd restart after SIGTERM and across one
//! after SIGKILL (each 2 s later, as in a rolling update, within the lease
//! TTL), and not one packet may be lost. The figures are printed
//! (`--no-capture` to see them).

mod common;

use std::time::{Duration, Instant};

use common::{TestLab, assert_nothing_left, lab_cli_env, ok};
use linen_lab::flaxd::Health;
use linen_lab::stream::Stream;
use linen_lab::{Cluster, LabState, Pod, StopMode, ping};

/// A TTL with room for a restart: the new flaxd adopts the lease within it.
const TTL: u32 = 10;
/// 40 pings a second.
const INTERVAL: Duration = Duration::from_millis(25);
/// Each stream's length: traffic before, during and after the operation.
const WINDOW: Duration = Duration::from_secs(12);
/// Traffic before the operation starts.
const BEFORE: Duration = Duration::from_secs(1);
/// Between the old flaxd's end and the new one's start, as in a rolling update
/// (the pod terminates, the new one is scheduled and started): long enough
/// that peers would act on a departure (their debounce is 100 ms), well within
/// the TTL.
const GAP: Duration = Duration::from_secs(2);

fn pings_pass(state: &LabState) {
    let mut last = String::new();
    let passed = linen_lab::wait::until("the ping matrix to pass", Duration::from_secs(20), || {
        let m = ping::run(state);
        last = m.render();
        m.passed().then_some(())
    });
    assert!(passed.is_ok(), "{last}");
}

/// Pings each stream sends in its window.
const COUNT: u32 = (WINDOW.as_millis() / INTERVAL.as_millis()) as u32;

/// A 3-node etcd lab (lease TTL [`TTL`]) with one pod per node, its ping matrix passing.
fn three_node_lab() -> (TestLab, Cluster, LabState) {
    let lab = TestLab::new();
    let cluster = Cluster::up(lab.etcd_spec(3, 1, TTL)).expect("up");
    let state = cluster.state().clone();
    pings_pass(&state);
    (lab, cluster, state)
}

fn pod_on<'a>(state: &'a LabState, node: &str) -> &'a Pod {
    let index = state.node(node).expect("node").index;
    state.pods_on(index).next().expect("a pod")
}

#[test]
fn a_flaxd_restart_or_crash_within_the_ttl_loses_no_packets() {
    let (lab, mut cluster, state) = three_node_lab();
    let [p1, p2, p3] = ["n1", "n2", "n3"].map(|n| pod_on(&state, n));
    let ip = |p: &Pod| p.ip.expect("an address").addr();

    for mode in [StopMode::Clean, StopMode::Crash] {
        // Into the restarted node and out of it, both crossing the overlay.
        let into = Stream::start(p1, ip(p2), INTERVAL, COUNT).expect("ping n1 -> n2");
        let out_of = Stream::start(p2, ip(p3), INTERVAL, COUNT).expect("ping n2 -> n3");
        let started = Instant::now();
        std::thread::sleep(BEFORE);
        let old = cluster.state().node("n2").unwrap().flaxd_pid;
        cluster.stop_flaxd("n2", mode).expect("stop flaxd");
        std::thread::sleep(GAP);
        let pid = cluster.start_flaxd("n2").expect("start flaxd");
        assert_ne!(Some(pid), old, "a new flaxd");
        let n2 = cluster.state().node("n2").unwrap().clone();
        linen_lab::wait::until("n2's new flaxd healthy", Duration::from_secs(20), || {
            (n2.flaxd_health() == Health::Healthy).then_some(())
        })
        .expect("healthy");
        cluster.await_overlay().expect("converged");
        let took = started.elapsed() - BEFORE - GAP;
        assert!(
            started.elapsed() < WINDOW,
            "the restart ({took:?}) outlasted the ping window"
        );
        let (into, out_of) = (into.finish().expect("ping"), out_of.finish().expect("ping"));
        eprintln!(
            "flaxd {mode:?}, {GAP:?}, restart on n2 (converged in {:.2}s): n1->n2 {into}; n2->n3 {out_of}",
            took.as_secs_f64()
        );
        assert_eq!(into.lost(), 0, "{mode:?}: n1 -> n2 {into}");
        assert_eq!(out_of.lost(), 0, "{mode:?}: n2 -> n3 {out_of}");
        assert!(into.sent >= COUNT && out_of.sent >= COUNT);
    }

    cluster.down().expect("down");
    assert_nothing_left(&lab);
}

/// OVS's own daemons restarted on a node under a continuous ping (reported, as
/// the figures are OVS's, not Linen's): ovsdb-server is not in the data path
/// (ovs-vswitchd keeps forwarding with the configuration it holds and
/// reconnects, flaxd's monitor reconnects and finds nothing to change), so not
/// one packet may be lost; ovs-vswitchd is the data path (userspace, here), so
/// its restart loses the packets until it has rebuilt its ports from OVSDB:
/// printed, and bounded only by "the node heals": its flaxd is healthy, every
/// tunnel is back and every pod pings every other.
#[test]
fn ovs_daemon_restarts_are_measured_and_heal() {
    let (lab, mut cluster, state) = three_node_lab();
    let [p1, p2, p3] = ["n1", "n2", "n3"].map(|n| pod_on(&state, n));
    let ip = |p: &Pod| p.ip.expect("an address").addr();
    for daemon in ["ovsdb-server", "ovs-vswitchd"] {
        let into = Stream::start(p1, ip(p2), INTERVAL, COUNT).expect("ping n1 -> n2");
        let out_of = Stream::start(p2, ip(p3), INTERVAL, COUNT).expect("ping n2 -> n3");
        let started = Instant::now();
        std::thread::sleep(BEFORE);
        let t = Instant::now();
        match daemon {
            "ovsdb-server" => cluster.restart_ovsdb_server("n2"),
            _ => cluster.restart_vswitchd("n2"),
        }
        .expect("restart");
        let n2 = cluster.state().node("n2").unwrap().clone();
        linen_lab::wait::until("n2's flaxd healthy", Duration::from_secs(20), || {
            (n2.flaxd_health() == Health::Healthy).then_some(())
        })
        .expect("healthy");
        cluster.await_overlay().expect("converged");
        let settled = t.elapsed();
        assert!(
            started.elapsed() < WINDOW,
            "{daemon}: healing ({settled:?}) outlasted the ping window"
        );
        let (into, out_of) = (into.finish().expect("ping"), out_of.finish().expect("ping"));
        eprintln!(
            "{daemon} SIGKILL + restart on n2 (healed in {:.2}s): n1->n2 {into}; n2->n3 {out_of}",
            settled.as_secs_f64()
        );
        assert!(into.sent >= COUNT && out_of.sent >= COUNT);
        if daemon == "ovsdb-server" {
            assert_eq!(into.lost(), 0, "{daemon}: n1 -> n2 {into}");
            assert_eq!(out_of.lost(), 0, "{daemon}: n2 -> n3 {out_of}");
        }
        pings_pass(cluster.state());
    }
    cluster.down().expect("down");
    assert_nothing_left(&lab);
}

/// The plugin replaced the way Linen's docs and DaemonSet do it
/// (`scripts/install-cni.sh`: a temporary file in the plugin directory
/// renamed over the binary) again and again while pods are added and deleted
/// through it: no ADD or DEL fails.
#[test]
fn replacing_the_plugin_under_an_add_del_loop_fails_no_add() {
    let lab = TestLab::new();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-cni.sh");
    let linen = linen_lab::pod::plugin_dirs().expect("the linen plugin")[0].join("linen");
    let bins = tempfile::tempdir().unwrap();
    let install = || {
        let out = std::process::Command::new(&script)
            .arg(bins.path())
            .arg(&linen)
            .output()
            .expect("run install-cni.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install();
    let dir = bins.path().to_string_lossy().into_owned();
    let env = [("LINEN_BIN_DIR", dir.as_str())];
    ok(&lab_cli_env(
        &lab,
        &[
            "up",
            "--nodes",
            "2",
            "--pods-per-node",
            "0",
            "--membership",
            "static",
        ],
        &env,
    ));
    let done = std::sync::atomic::AtomicBool::new(false);
    let rounds = 15;
    let installs = std::thread::scope(|s| {
        let installer = s.spawn(|| {
            let mut n = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                install();
                n += 1;
            }
            n
        });
        for _ in 0..rounds {
            let out = lab_cli_env(&lab, &["add-pod", "n1"], &env);
            if !out.status.success() {
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            ok(&out);
            let state = linen_lab::load(&lab.dir()).unwrap().expect("state");
            let pods: Vec<String> = state.pods.iter().map(Pod::short_name).collect();
            for p in pods {
                let out = lab_cli_env(&lab, &["del-pod", &p], &env);
                if !out.status.success() {
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                ok(&out);
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        installer.join().unwrap()
    });
    eprintln!("{rounds} ADD + DEL while the plugin was replaced {installs} times: 0 failed");
    assert!(
        installs >= rounds as u32,
        "the installs overlapped the calls: {installs}"
    );
    ok(&lab_cli_env(&lab, &["down"], &env));
    assert_nothing_left(&lab);
}

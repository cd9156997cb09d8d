//! Issue 9's fault suite, OVS side (root; a real node with its own ovsdb-server and
//! ovs-vswitchd, the real bridge and host-local plugins, linen): ovsdb-server is killed
//! (SIGKILL, as a crash, mid-transaction or between them) and restarted over its database
//! again and again while ADDs run. Every ADD either succeeds or says "try again later"
//! (code 11): none fails with another code (the adversarial pass saw 100) or panics. Once
//! OVS is back, an ADD and a CHECK succeed and the node holds one bridge with its tunnels,
//! whatever transaction was cut off.
//!
//! Figures are printed (`--nocapture`).

mod plugin_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use linen_lab::{Daemon, Topology};
use plugin_support::*;
use serde_json::json;

#[test]
fn adds_while_ovsdb_server_dies_succeed_or_say_try_again() {
    let lab = Lab::up(2, Topology::Mesh);
    let list = lab.conflist(0, "1.0.0", json!({}));
    let ovs = lab.node(0).ovs();

    let stop = AtomicBool::new(false);
    let (outcomes, crashes) = std::thread::scope(|s| {
        let adder = s.spawn(|| {
            // code -> count; 0 is success.
            let mut outcomes: BTreeMap<u32, usize> = BTreeMap::new();
            let mut other = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let mut pod = lab.pod(0, &format!("f{i}"));
                match lab.add(&list, &mut pod) {
                    Ok(_) => *outcomes.entry(0).or_default() += 1,
                    Err(cni::runtime::Error::Plugin { plugin, error, .. }) if plugin == "linen" => {
                        *outcomes.entry(error.code).or_default() += 1;
                        if error.code != 11 {
                            other.push(format!("code {}: {}", error.code, error.msg));
                        }
                    }
                    Err(e) => other.push(e.to_string()),
                }
                // The attachment goes, whatever ADD did (DEL works with OVS down).
                if let Err(e) = lab.del(&list, &pod) {
                    other.push(format!("DEL: {e}"));
                }
            }
            (outcomes, other)
        });
        let mut crashes = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(12) {
            std::thread::sleep(Duration::from_millis(300));
            ovs.kill(Daemon::OvsdbServer).expect("kill ovsdb-server");
            crashes += 1;
            std::thread::sleep(Duration::from_millis(100));
            ovs.start_ovsdb_server().expect("restart ovsdb-server");
        }
        stop.store(true, Ordering::Relaxed);
        (adder.join().expect("the ADD loop"), crashes)
    });
    let (outcomes, other) = outcomes;
    let total: usize = outcomes.values().sum();
    eprintln!(
        "{total} ADDs across {crashes} ovsdb-server crashes: {} succeeded, {} said try again later (11); others: {other:?}",
        outcomes.get(&0).copied().unwrap_or(0),
        outcomes.get(&11).copied().unwrap_or(0),
    );
    assert!(other.is_empty(), "ADDs failed otherwise: {other:#?}");
    assert!(
        outcomes.get(&11).copied().unwrap_or(0) > 0,
        "no ADD met a dead ovsdb-server: the crashes missed ({outcomes:?})"
    );
    assert!(outcomes.get(&0).copied().unwrap_or(0) > 0, "{outcomes:?}");

    // OVS is back: an ADD and a CHECK succeed, and the node has one bridge, its internal
    // port and one tunnel, to n2.
    let mut pod = lab.pod(0, "after");
    lab.add(&list, &mut pod).expect("ADD after the crashes");
    lab.check(&list, &pod).expect("CHECK after the crashes");
    let bridges = lab.vsctl(0, &["list-br"]);
    assert_eq!(
        bridges.split_whitespace().filter(|b| *b == "br0").count(),
        1,
        "{bridges}"
    );
    let tunnels = lab.tunnels(0);
    assert_eq!(
        tunnels.keys().cloned().collect::<Vec<_>>(),
        vec![lab.vteps()[1].clone()],
        "{tunnels:?}"
    );
    lab.del(&list, &pod).expect("DEL");
}

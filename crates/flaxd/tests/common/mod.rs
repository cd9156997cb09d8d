//! Fixtures for flaxd's integration tests: real etcd (single node or a loopback cluster),
//! real ovsdb-server + ovs-vswitchd per simulated node (userspace datapath, ovs-vswitchd in a
//! network namespace created for it), and in-process flaxd daemons. Every fixture is a
//! guard: dropping it kills its processes and removes its directory and namespace, also when
//! the test fails. Names carry a random suffix, so tests run in parallel.
//!
//! Needs root, `etcd`, `ovsdb-tool`, `ovsdb-server`, `ovs-vswitchd`, `ovs-vsctl` and `ip`.

// Each test binary uses a subset of the fixtures.
#![allow(dead_code, unused_imports)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

mod etcd;
mod node;
mod ovs;
mod writes;

pub use etcd::Etcd;
pub use node::{Node, http_get, write_peers};
pub use ovs::OvsNode;
pub use writes::WriteCounter;

pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
pub const BRIDGE: &str = "br0";
/// Every wait of these tests is bounded by this.
pub const LONG: Duration = Duration::from_secs(20);

/// The test kit's [`testkit::eventually`] for async checks (the daemons under test run on
/// the same runtime, so the wait must not block it): the same polling policy
/// ([`testkit::Poll`]), with the sleep awaited. Panics naming `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut poll = testkit::Poll::new(what, timeout);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        match poll.next_sleep() {
            Ok(pause) => tokio::time::sleep(pause).await,
            Err(timeout) => panic!("{timeout}"),
        }
    }
}

pub fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Logs of the daemons under test, shown for failing tests (`FLAXD_TEST_LOG=debug`).
pub fn init_logs() {
    let filter = std::env::var("FLAXD_TEST_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

pub fn program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

//! One simulated node's Open vSwitch.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flaxd::linen::model::{ObservedPort, Source};
use flaxd::linen::ovs::Ovs;

use super::{BRIDGE, LONG, SCHEMA, eventually, kill, program, run, suffix};

/// One simulated node's Open vSwitch: ovsdb-server on `<dir>/db.sock`, ovs-vswitchd inside
/// namespace `lnt<pid>-flx<random>` ([`testkit::name`]: a killed run's is swept).
pub struct OvsNode {
    dir: tempfile::TempDir,
    netns: String,
    ovsdb: Option<Child>,
    vswitchd: Option<Child>,
}

impl OvsNode {
    pub fn start() -> OvsNode {
        let dir = tempfile::Builder::new()
            .prefix(&testkit::name("flaxd-ovs-"))
            .tempdir()
            .unwrap();
        let netns = testkit::name(&format!("flx{}", suffix()));
        run(Command::new(program("ip")).args(["netns", "add", &netns]));
        let mut node = OvsNode {
            dir,
            netns,
            ovsdb: None,
            vswitchd: None,
        };
        node.create_db();
        node.start_ovsdb();
        node.vsctl(&["init"]);
        node.start_vswitchd();
        node
    }

    pub fn addr(&self) -> String {
        format!("unix:{}", self.dir.path().join("db.sock").display())
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn create_db(&self) {
        let db = self.dir.path().join("conf.db");
        let _ = std::fs::remove_file(&db);
        run(Command::new(program("ovsdb-tool"))
            .arg("create")
            .arg(&db)
            .arg(SCHEMA));
    }

    pub fn start_ovsdb(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new(program("ovsdb-server"));
        cmd.arg(d.join("conf.db"))
            .arg(format!("--remote=punix:{}", d.join("db.sock").display()))
            .arg(format!("--pidfile={}", d.join("ovsdb.pid").display()))
            .arg(format!("--unixctl={}", d.join("ovsdb.ctl").display()))
            .arg(format!("--log-file={}", d.join("ovsdb.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Killed with the test process, also when no destructor runs (a killed test).
        let child = testkit::process::spawn(cmd).expect("ovsdb-server");
        self.ovsdb = Some(child);
        let sock = d.join("db.sock");
        testkit::eventually(
            format!("ovsdb-server to listen on {}", sock.display()),
            LONG,
            || std::os::unix::net::UnixStream::connect(&sock).ok(),
        );
    }

    pub fn kill_ovsdb(&mut self) {
        kill(&mut self.ovsdb);
    }

    /// Restarts ovsdb-server; with `fresh`, on a new empty database (then with a root row,
    /// as the packaging's `ovs-vsctl init` makes).
    pub fn restart_ovsdb(&mut self, fresh: bool) {
        self.kill_ovsdb();
        if fresh {
            self.create_db();
        }
        self.start_ovsdb();
        if fresh {
            self.vsctl(&["init"]);
        }
    }

    pub fn start_vswitchd(&mut self) {
        let d = self.dir.path();
        let pidfile = d.join("vswitchd.pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = Command::new(program("ip"));
        cmd.args(["netns", "exec", &self.netns])
            .arg(program("ovs-vswitchd"))
            .arg(self.addr())
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!("--unixctl={}", d.join("vswitchd.ctl").display()))
            .arg(format!("--log-file={}", d.join("vswitchd.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // `ip netns exec` execs ovs-vswitchd, which keeps the parent-death signal.
        let child = testkit::process::spawn(cmd).expect("ovs-vswitchd");
        self.vswitchd = Some(child);
        testkit::eventually(
            format!("ovs-vswitchd pidfile {}", pidfile.display()),
            LONG,
            || pidfile.exists().then_some(()),
        );
    }

    /// SIGKILL, as a crash would.
    pub fn kill_vswitchd(&mut self) {
        kill(&mut self.vswitchd);
    }

    pub fn vsctl(&self, args: &[&str]) -> String {
        run(Command::new(program("ovs-vsctl"))
            .arg(format!("--db={}", self.addr()))
            .args(["--no-wait", "--timeout=10"])
            .args(args))
    }

    /// Linen's tunnels on the bridge, by remote address; `Ok(None)` when there is no bridge,
    /// `Err` when OVSDB cannot be reached or read.
    pub async fn try_tunnels(&self) -> Result<Option<BTreeMap<IpAddr, ObservedPort>>, String> {
        let ovs = Ovs::connect(&self.addr())
            .await
            .map_err(|e| format!("connect to {}: {e}", self.addr()))?;
        let (bridge, _) = ovs
            .observe(BRIDGE)
            .await
            .map_err(|e| format!("read bridge {BRIDGE}: {e}"))?;
        Ok(bridge.map(|b| {
            b.owned_tunnels()
                .into_iter()
                .map(|(ip, p)| (ip, p.clone()))
                .collect()
        }))
    }

    /// Linen's tunnels on the bridge, by remote address; panics when there is no bridge or
    /// OVSDB cannot be read, so "no tunnels" is never a broken OVS.
    pub async fn tunnels(&self) -> BTreeMap<IpAddr, ObservedPort> {
        match self.try_tunnels().await {
            Ok(Some(t)) => t,
            Ok(None) => panic!("no bridge {BRIDGE} on {}", self.addr()),
            Err(e) => panic!("{e}"),
        }
    }

    /// Linen's tunnels, or none when there is no bridge yet; panics when OVSDB cannot be read.
    pub async fn tunnels_if_bridge(&self) -> BTreeMap<IpAddr, ObservedPort> {
        self.try_tunnels()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default()
    }

    /// Waits until the tunnels are to exactly `want` (flaxd-managed, each labelled with its
    /// peer) and returns them.
    pub async fn await_tunnels(&self, want: &[(&str, &str)]) -> BTreeMap<IpAddr, ObservedPort> {
        let want: BTreeMap<IpAddr, String> = want
            .iter()
            .map(|(peer, ip)| (ip.parse().unwrap(), peer.to_string()))
            .collect();
        eventually(&format!("tunnels to {want:?}"), LONG, || async {
            // Not there yet (no bridge, OVSDB restarting) is "not yet", not a failure.
            let t = self.try_tunnels().await.ok().flatten()?;
            let got: BTreeMap<IpAddr, String> = t
                .iter()
                .filter(|(_, p)| p.source() == Some(Source::Flaxd))
                .map(|(ip, p)| {
                    let peer = p
                        .external_ids
                        .get("linen-peer")
                        .cloned()
                        .unwrap_or_default();
                    (*ip, peer)
                })
                .collect();
            (got == want && t.len() == want.len()).then_some(t)
        })
        .await
    }

    /// The ofport ovs-vswitchd gave interface `name`, if any.
    pub fn ofport(&self, name: &str) -> Option<i64> {
        let out = Command::new(program("ovs-vsctl"))
            .arg(format!("--db={}", self.addr()))
            .args(["--timeout=5", "get", "Interface", name, "ofport"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
    }
}

impl Drop for OvsNode {
    fn drop(&mut self) {
        kill(&mut self.vswitchd);
        kill(&mut self.ovsdb);
        let _ = Command::new(program("ip"))
            .args(["netns", "del", &self.netns])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

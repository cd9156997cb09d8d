//! Fixtures for flaxd's integration tests: real etcd (single node or a loopback cluster),
//! real ovsdb-server + ovs-vswitchd per simulated node (userspace datapath, ovs-vswitchd in a
//! network namespace created for it), and in-process flaxd daemons. Every fixture is a
//! guard: dropping it kills its processes and removes its directory and namespace, also when
//! the test fails. Names carry a random suffix, so tests run in parallel.
//!
//! Needs root, `etcd`, `ovsdb-tool`, `ovsdb-server`, `ovs-vswitchd`, `ovs-vsctl` and `ip`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flaxd::etcd::{EtcdConfig, etcd_client};
use flaxd::linen::config::Datapath;
use flaxd::linen::model::{ObservedPort, Source};
use flaxd::linen::ovs::Ovs;
use flaxd::{ConflistOptions, Daemon, DaemonConfig, NodeIdentity, SourceConfig};

pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
pub const BRIDGE: &str = "br0";
/// Every wait of these tests is bounded by this.
pub const LONG: Duration = Duration::from_secs(20);

/// Awaits `check` every 20 ms until it returns `Some`, for at most `timeout`; panics naming
/// `what` after that.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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

fn program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One simulated node's Open vSwitch: ovsdb-server on `<dir>/db.sock`, ovs-vswitchd inside
/// namespace `flx-<random>`.
pub struct OvsNode {
    dir: tempfile::TempDir,
    netns: String,
    ovsdb: Option<Child>,
    vswitchd: Option<Child>,
}

impl OvsNode {
    pub fn start() -> OvsNode {
        let dir = tempfile::Builder::new()
            .prefix("flaxd-ovs-")
            .tempdir()
            .unwrap();
        let netns = format!("flx-{}", suffix());
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
        let child = Command::new(program("ovsdb-server"))
            .arg(d.join("conf.db"))
            .arg(format!("--remote=punix:{}", d.join("db.sock").display()))
            .arg(format!("--pidfile={}", d.join("ovsdb.pid").display()))
            .arg(format!("--unixctl={}", d.join("ovsdb.ctl").display()))
            .arg(format!("--log-file={}", d.join("ovsdb.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovsdb-server");
        self.ovsdb = Some(child);
        let sock = d.join("db.sock");
        let deadline = Instant::now() + LONG;
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "ovsdb-server did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
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
        let child = Command::new(program("ip"))
            .args(["netns", "exec", &self.netns])
            .arg(program("ovs-vswitchd"))
            .arg(self.addr())
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!("--unixctl={}", d.join("vswitchd.ctl").display()))
            .arg(format!("--log-file={}", d.join("vswitchd.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovs-vswitchd");
        self.vswitchd = Some(child);
        let deadline = Instant::now() + LONG;
        while !pidfile.exists() {
            assert!(Instant::now() < deadline, "ovs-vswitchd did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
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

    /// Linen's tunnels on the bridge, by remote address (empty when there is no bridge or
    /// OVSDB cannot be reached).
    pub async fn tunnels(&self) -> BTreeMap<IpAddr, ObservedPort> {
        let Ok(ovs) = Ovs::connect(&self.addr()).await else {
            return BTreeMap::new();
        };
        match ovs.observe(BRIDGE).await {
            Ok((Some(b), _)) => b
                .owned_tunnels()
                .into_iter()
                .map(|(ip, p)| (ip, p.clone()))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// Waits until the tunnels are to exactly `want` (flaxd-managed, each labelled with its
    /// peer) and returns them.
    pub async fn await_tunnels(&self, want: &[(&str, &str)]) -> BTreeMap<IpAddr, ObservedPort> {
        let want: BTreeMap<IpAddr, String> = want
            .iter()
            .map(|(peer, ip)| (ip.parse().unwrap(), peer.to_string()))
            .collect();
        eventually(&format!("tunnels to {want:?}"), LONG, || async {
            let t = self.tunnels().await;
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

/// An etcd cluster on loopback with random ports and a temporary data directory.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<EtcdMember>,
}

struct EtcdMember {
    name: String,
    client: u16,
    child: Option<Child>,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Self::cluster(1).await
    }

    /// `n` members, started together; returns once every one answers.
    pub async fn cluster(n: usize) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("flaxd-etcd-")
            .tempdir()
            .unwrap();
        let token = format!("flx-{}", suffix());
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            let child = Command::new(program("etcd"))
                .args(["--name", name])
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg(format!("--initial-cluster-token={token}"))
                .args([
                    "--initial-cluster-state=new",
                    "--heartbeat-interval=50",
                    "--election-timeout=500",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd");
            members.push(EtcdMember {
                name: name.clone(),
                client: *client,
                child: Some(child),
            });
        }
        let etcd = Etcd { dir, members };
        for ep in etcd.endpoints() {
            eventually(&format!("etcd at {ep}"), LONG, || async {
                let mut c = etcd_client::Client::connect([ep.as_str()], None)
                    .await
                    .ok()?;
                tokio::time::timeout(Duration::from_secs(1), c.get("probe", None))
                    .await
                    .ok()?
                    .ok()
            })
            .await;
        }
        etcd
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// Every member's endpoint, stopped or not.
    pub fn all_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), None)
            .await
            .expect("etcd client")
    }

    /// SIGKILLs member `i`.
    pub fn stop(&mut self, i: usize) {
        kill(&mut self.members[i].child);
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            kill(&mut m.child);
        }
    }
}

/// A test node: its OVS, its conflist path, and the flaxd config for it.
pub struct Node {
    pub name: String,
    pub vtep: IpAddr,
    pub ovs: OvsNode,
    pub conflist: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn new(name: &str, vtep: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("flaxd-node-")
            .tempdir()
            .unwrap();
        Node {
            name: name.into(),
            vtep: vtep.parse().unwrap(),
            ovs: OvsNode::start(),
            conflist: dir.path().join("net.d/10-linen.conflist"),
            _dir: dir,
        }
    }

    pub fn config(&self) -> DaemonConfig {
        let me = NodeIdentity {
            name: self.name.clone(),
            vtep: self.vtep,
        };
        let mut cfg = DaemonConfig::new(me, self.ovs.addr());
        cfg.bridge = BRIDGE.into();
        cfg.datapath = Datapath::Netdev;
        cfg.debounce = Duration::from_millis(20);
        cfg.conflist = Some(ConflistOptions {
            path: self.conflist.clone(),
            network: "linen".into(),
            linux_bridge: "kbr0".into(),
            underlay_mtu: 1500,
        });
        cfg
    }

    pub fn etcd_config(&self, etcd: &[String], ttl: i64) -> EtcdConfig {
        EtcdConfig {
            endpoints: etcd.to_vec(),
            prefix: "/linen".into(),
            lease_ttl: ttl,
            node: self.name.clone(),
            vtep: self.vtep,
            pod_cidr: None,
            allocate: Some(("10.244.0.0/16".parse().unwrap(), 24)),
        }
    }

    pub async fn start_etcd(&self, etcd: &[String], ttl: i64) -> Daemon {
        Daemon::start(
            self.config(),
            SourceConfig::Etcd(self.etcd_config(etcd, ttl)),
        )
        .await
        .expect("flaxd starts")
    }

    /// The pod subnet in this node's conflist, once written.
    pub async fn await_conflist_subnet(&self) -> String {
        eventually("the conflist", LONG, || async {
            let text = std::fs::read_to_string(&self.conflist).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            Some(v["plugins"][0]["ipam"]["gateway"].as_str()?.to_owned())
        })
        .await
    }
}

/// Writes a peer file (YAML) atomically, as a ConfigMap update or an editor would: a new
/// file renamed over the old one.
pub fn write_peers(path: &Path, peers: &[(&str, &str)]) {
    let mut text = String::new();
    for (name, vtep) in peers {
        text.push_str(&format!("- name: {name}\n  vtep: {vtep}\n"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Node {
    /// flaxd with the static-file source reading `peers`.
    pub async fn start_file(&self, peers: &Path, cfg: DaemonConfig) -> Daemon {
        Daemon::start(cfg, SourceConfig::File(peers.to_owned()))
            .await
            .expect("flaxd starts")
    }
}

/// A plain HTTP/1.0 GET on loopback; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

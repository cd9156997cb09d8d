//! Shared harness for the plugin's end-to-end tests: a lab of real nodes (each a network
//! namespace with its own ovsdb-server and ovs-vswitchd), pod namespaces, the node's
//! conflist run through the CNI runtime (real `bridge`, `host-local` and `linen`
//! binaries, executed inside the node namespace), direct plugin invocations for bad-input
//! cases, snapshots of OVS and links to prove "nothing changed", and real packets (ping,
//! TCP) between pods.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cni::runtime::{Exec, NetworkConfigList, RuntimeConf};
use cni::types;
use linen_lab::{Cluster, ClusterSpec, NetnsGuard, Node, Topology};
use rand::Rng;
use serde_json::{Value, json};

/// CNI_PATH for the tests: the directory holding this build's `linen` first (the lab's own
/// search: `LINEN_BIN_DIR`, else next to the test binary's directory), then the system's.
/// Refuses (panics) a `linen` installed in a system directory or older than its sources.
pub fn plugin_dirs() -> Vec<PathBuf> {
    let dirs = linen_lab::pod::plugin_dirs().unwrap_or_else(|e| panic!("{e}"));
    testkit::binary::require_fresh_build(&dirs[0].join("linen"), testkit::binary::LINEN_CRATES);
    dirs
}

pub fn linen_bin() -> PathBuf {
    plugin_dirs()[0].join("linen")
}

/// A lab with a unique name under a temp directory; torn down on drop.
pub struct Lab {
    pub cluster: Cluster,
    pub name: String,
    pub root: tempfile::TempDir,
}

/// How long a pair of pods has to answer a ping.
pub const PING_WINDOW: Duration = Duration::from_secs(30);

pub fn random_suffix() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..6)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

impl Lab {
    pub fn up(nodes: usize, topology: Topology) -> Lab {
        plugin_dirs(); // this build's linen, or refuse
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .try_init();
        let name = testkit::unique_name();
        let root = testkit::tempdir().expect("temp dir");
        // Nodes only: each test makes its own pods with its own conflists.
        let spec = ClusterSpec {
            dir: Some(root.path().join(&name)),
            topology,
            pods_per_node: 0,
            ..ClusterSpec::new(&name, nodes)
        };
        let cluster =
            Cluster::up(spec).unwrap_or_else(|e| panic!("lab up: {}", linen_lab::error_chain(&e)));
        Lab {
            cluster,
            name,
            root,
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.cluster.nodes()[i]
    }

    pub fn vteps(&self) -> Vec<String> {
        self.cluster
            .nodes()
            .iter()
            .map(|n| n.underlay_ip.addr().to_string())
            .collect()
    }

    /// A fresh pod namespace `<lab>-n<i>-p<tag>`, deleted on drop.
    pub fn pod(&self, node: usize, tag: &str) -> Pod {
        let name = format!("{}-p{tag}", self.node(node).name);
        let guard = NetnsGuard::ensure(&name).expect("pod netns");
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Pod {
            name: name.clone(),
            path: PathBuf::from("/var/run/netns").join(&name),
            node,
            _guard: guard,
            ip: None,
        }
    }

    /// The runtime for node `i`: plugins run inside the node's namespace.
    pub fn exec(&self, node: usize) -> Exec {
        let n = self.node(node);
        Exec::new(plugin_dirs(), n.run_dir.join("cni-cache")).in_netns(&n.netns_path)
    }

    /// `bridge` + `host-local` + `linen` for node `i`, in `version`. Every node lists every
    /// node's VTEP (a mesh); `linen` skips its own.
    pub fn conflist(&self, node: usize, version: &str, linen: Value) -> Value {
        let n = self.node(node);
        let mut ipam = n.pods.host_local_ipam();
        ipam["dataDir"] = json!(n.run_dir.join("ipam").display().to_string());
        let mut linen_conf = json!({
            "type": "linen",
            "ovsBridge": "br0",
            "vtepIPs": self.vteps(),
            "datapathType": "netdev",
            "ovsdbSocket": format!("unix:{}", n.ovsdb_socket.display()),
        });
        merge(&mut linen_conf, linen);
        json!({
            "cniVersion": version,
            "name": "linen-test",
            "plugins": [
                {"type": "bridge", "bridge": "kbr0", "isGateway": true, "ipam": ipam},
                linen_conf,
            ]
        })
    }

    /// Runs ADD of `list` for `pod`; records the pod's IPv4 address.
    pub fn add(&self, list: &Value, pod: &mut Pod) -> Result<types::Result, cni::runtime::Error> {
        let result = self
            .exec(pod.node)
            .add_network_list(&parse_list(list), &pod.rt())?;
        pod.ip = result
            .ips
            .iter()
            .map(|i| i.address.addr())
            .find(IpAddr::is_ipv4);
        Ok(result)
    }

    pub fn check(&self, list: &Value, pod: &Pod) -> Result<(), cni::runtime::Error> {
        self.exec(pod.node)
            .check_network_list(&parse_list(list), &pod.rt())
    }

    pub fn del(&self, list: &Value, pod: &Pod) -> Result<(), cni::runtime::Error> {
        self.exec(pod.node)
            .del_network_list(&parse_list(list), &pod.rt())
    }

    /// Runs one plugin binary directly inside node `i`'s namespace, as a runtime would.
    pub fn invoke(
        &self,
        node: usize,
        plugin: &Path,
        env: &[(&str, &str)],
        stdin: &[u8],
    ) -> Invocation {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node(node).name])
            .arg(plugin);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A plugin hung on a dead OVSDB dies with the test, not after it.
        let mut child = testkit::process::spawn(cmd).expect("spawn plugin");
        // A plugin that refuses its environment exits without reading stdin, possibly
        // before this write: a closed pipe is its answer, not a test failure.
        match child.stdin.take().expect("stdin").write_all(stdin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("write stdin: {e}"),
        }
        let out = child.wait_with_output().expect("plugin output");
        Invocation {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every OVS row of node `i` that matters (Bridge, Port, Interface, Controller), as
    /// sorted text, with the columns ovs-vswitchd updates on its own left out.
    pub fn ovs_snapshot(&self, node: usize) -> String {
        let n = self.node(node);
        let db = format!("--db=unix:{}", n.ovsdb_socket.display());
        let mut out = String::new();
        for (table, cols) in [
            (
                "Bridge",
                "_uuid,name,ports,controller,fail_mode,datapath_type,external_ids",
            ),
            ("Port", "_uuid,name,interfaces,protected,external_ids"),
            ("Interface", "_uuid,name,type,options,external_ids"),
            ("Controller", "_uuid,target,external_ids"),
        ] {
            let text = run(Command::new("ovs-vsctl").args([
                db.as_str(),
                "--format=json",
                &format!("--columns={cols}"),
                "list",
                table,
            ]));
            let v: Value = serde_json::from_str(&text).expect("ovs-vsctl json");
            let mut rows: Vec<String> = v["data"]
                .as_array()
                .map(|rows| rows.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default();
            rows.sort();
            out.push_str(&format!("{table}: {}\n", rows.join("\n  ")));
        }
        out
    }

    /// The node's links with their master and MTU, sorted.
    pub fn links_snapshot(&self, node: usize) -> String {
        links(&self.node(node).name)
    }

    /// Runs `ovs-vsctl` against node `i`'s database; returns stdout.
    pub fn vsctl(&self, node: usize, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.node(node).ovsdb_socket.display());
        let mut cmd = Command::new("ovs-vsctl");
        cmd.arg(db).args(args);
        run(&mut cmd)
    }

    /// Linen's tunnel ports on node `i`: remote IP -> (port name, protected).
    pub fn tunnels(&self, node: usize) -> BTreeMap<String, (String, bool)> {
        let text = self.vsctl(
            node,
            &[
                "--format=json",
                "--columns=name,protected,external_ids",
                "list",
                "Port",
            ],
        );
        let v: Value = serde_json::from_str(&text).expect("json");
        let mut out = BTreeMap::new();
        for row in v["data"].as_array().into_iter().flatten() {
            let name = row[0].as_str().unwrap_or_default().to_owned();
            let protected = row[1].as_bool().unwrap_or(false);
            let ids = ovs_map(&row[2]);
            if ids.get("linen-owner").map(String::as_str) == Some("linen")
                && let Some(remote) = ids.get("linen-remote-ip")
            {
                out.insert(remote.clone(), (name, protected));
            }
        }
        out
    }
}

/// Decodes an ovs-vsctl JSON map `["map", [[k, v], ...]]`.
pub fn ovs_map(v: &Value) -> BTreeMap<String, String> {
    v[1].as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv[0].as_str()?.to_owned(), kv[1].as_str()?.to_owned())))
        .collect()
}

pub fn links(netns: &str) -> String {
    let text = run(Command::new("ip").args(["-n", netns, "-j", "link", "show"]));
    let v: Value = serde_json::from_str(&text).expect("ip -j");
    let mut rows: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "{} master={} mtu={} flags={}",
                l["ifname"], l["master"], l["mtu"], l["flags"]
            )
        })
        .collect();
    rows.sort();
    rows.join("\n")
}

pub struct Invocation {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Invocation {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A pod: a network namespace, deleted on drop.
pub struct Pod {
    pub name: String,
    pub path: PathBuf,
    pub node: usize,
    pub ip: Option<IpAddr>,
    _guard: NetnsGuard,
}

impl Pod {
    pub fn rt(&self) -> RuntimeConf {
        RuntimeConf {
            container_id: format!("ctr-{}", self.name),
            netns: self.path.clone(),
            ifname: "eth0".into(),
            ..Default::default()
        }
    }

    pub fn ip(&self) -> IpAddr {
        self.ip.expect("pod has no address yet")
    }

    /// Pings `dst` until it answers or [`PING_WINDOW`] passes (one ping of 1 s at a time):
    /// a first packet lost to ARP or a busy machine is not a failure.
    pub fn ping(&self, dst: IpAddr) -> bool {
        self.ping_within(dst, PING_WINDOW)
    }

    /// Pings `dst` until it answers or `limit` passes: also for paths that take time to
    /// open, such as a bridge whose unreachable controller keeps it from switching until
    /// OVS's fail-open timer fires.
    pub fn ping_within(&self, dst: IpAddr, limit: Duration) -> bool {
        testkit::try_eventually(format!("{} to answer {dst}", self.name), limit, || {
            Command::new("ip")
                .args(["netns", "exec", &self.name, "ping", "-c1", "-W1"])
                .arg(dst.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                .then_some(())
        })
        .is_ok()
    }

    /// The pod's eth0 MTU.
    pub fn mtu(&self) -> u32 {
        let text = run(Command::new("ip").args(["-n", &self.name, "-j", "link", "show", "eth0"]));
        let v: Value = serde_json::from_str(&text).expect("ip -j");
        v[0]["mtu"].as_u64().expect("mtu") as u32
    }
}

pub fn parse_list(v: &Value) -> NetworkConfigList {
    NetworkConfigList::from_slice(v.to_string().as_bytes()).expect("conflist")
}

/// Deep-merges `patch` into `base` (objects merge, everything else replaces).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// Runs `cmd`, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that has entered the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(netns).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// How a [`tcp_transfer`] went wrong.
#[derive(Debug)]
pub enum TcpFailure {
    /// Nothing was tried over the overlay's data path: a listener, namespace or connection
    /// could not be set up.
    Setup(String),
    /// Connected, then the bytes stopped moving: a read or write timed out.
    Stalled(String),
    /// The connection broke another way (reset), or bytes arrived wrong or short.
    Broken(String),
}

/// A completed [`tcp_transfer`].
#[derive(Debug)]
pub struct Transfer {
    pub mbps: f64,
    /// The sender's segment size (TCP_MAXSEG) after the transfer: pod MTU - 40 (IP and TCP
    /// headers), less any TCP options.
    pub mss: u32,
}

fn io_failure(what: String, e: &std::io::Error) -> TcpFailure {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    let msg = format!("{what}: {e}");
    if matches!(e.kind(), WouldBlock | TimedOut) {
        TcpFailure::Stalled(msg)
    } else {
        TcpFailure::Broken(msg)
    }
}

/// Sends `bytes` over TCP from pod `from` to a listener in pod `to` and checks every byte
/// arrived in order. With an MTU the tunnel cannot carry, full-size segments are dropped and
/// this stalls. Every wait (accept, connect, each read and write) is bounded by `timeout`.
pub fn tcp_transfer(
    from: &Pod,
    to: &Pod,
    bytes: usize,
    timeout: Duration,
) -> Result<Transfer, TcpFailure> {
    let setup = |what: &str, e: std::io::Error| TcpFailure::Setup(format!("{what}: {e}"));
    let dst = to.ip();
    let listener = in_netns(&to.path, || TcpListener::bind(SocketAddr::new(dst, 0)))
        .map_err(|e| setup("bind", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| setup("listener address", e))?
        .port();
    // Polled, so a client that never connects cannot leave accept() blocked forever.
    listener
        .set_nonblocking(true)
        .map_err(|e| setup("nonblocking listener", e))?;
    let pattern = |i: usize| (i % 251) as u8;
    std::thread::scope(|s| {
        let server = s.spawn(move || -> Result<usize, TcpFailure> {
            let accepted =
                testkit::try_eventually("a connection", timeout, || match listener.accept() {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    other => Some(other),
                })
                .map_err(|e| TcpFailure::Setup(e.to_string()))?;
            let (mut conn, _) = accepted.map_err(|e| setup("accept", e))?;
            conn.set_nonblocking(false)
                .and_then(|()| conn.set_read_timeout(Some(timeout)))
                .map_err(|e| setup("server socket", e))?;
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = conn
                    .read(&mut buf)
                    .map_err(|e| io_failure(format!("read after {got} bytes"), &e))?;
                if n == 0 {
                    return Ok(got);
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    if *b != pattern(got + k) {
                        return Err(TcpFailure::Broken(format!("corrupt byte at {}", got + k)));
                    }
                }
                got += n;
            }
        });
        let started = Instant::now();
        let sent = in_netns(&from.path, || -> Result<u32, TcpFailure> {
            let mut conn = TcpStream::connect_timeout(&SocketAddr::new(dst, port), timeout)
                .map_err(|e| setup("connect", e))?;
            conn.set_write_timeout(Some(timeout))
                .map_err(|e| setup("client socket", e))?;
            let mut sent = 0usize;
            while sent < bytes {
                let n = (bytes - sent).min(64 * 1024);
                let piece: Vec<u8> = (sent..sent + n).map(pattern).collect();
                conn.write_all(&piece)
                    .map_err(|e| io_failure(format!("write after {sent} bytes"), &e))?;
                sent += n;
            }
            let mss = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::TcpMaxSeg)
                .map_err(|e| setup("TCP_MAXSEG", e.into()))?;
            conn.shutdown(std::net::Shutdown::Write)
                .map_err(|e| io_failure("shutdown".into(), &e))?;
            Ok(mss)
        });
        // On a send failure the server thread ends by itself (reset, read or accept timeout).
        let mss = sent?;
        let got = server
            .join()
            .map_err(|_| TcpFailure::Broken("server thread panicked".into()))??;
        let secs = started.elapsed().as_secs_f64();
        if got != bytes {
            return Err(TcpFailure::Broken(format!(
                "received {got} of {bytes} bytes"
            )));
        }
        Ok(Transfer {
            mbps: bytes as f64 * 8.0 / secs / 1e6,
            mss,
        })
    })
}

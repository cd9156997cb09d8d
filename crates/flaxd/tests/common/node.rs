//! A simulated node running an in-process flaxd, and helpers to drive it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flaxd::etcd::EtcdConfig;
use flaxd::linen::config::Datapath;
use flaxd::{ConflistOptions, Daemon, DaemonConfig, NodeIdentity, SourceConfig};

use super::{BRIDGE, LONG, OvsNode, eventually};

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
            .prefix(&testkit::name("flaxd-node-"))
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
            ipam_data_dir: None,
            host_port_dir: None,
        });
        cfg
    }

    pub fn etcd_config(&self, etcd: &[String], ttl: i64) -> EtcdConfig {
        EtcdConfig {
            endpoints: etcd.to_vec(),
            access: flaxd::etcd::EtcdAccess::insecure(),
            prefix: "/linen".into(),
            lease_ttl: ttl,
            node: self.name.clone(),
            vtep: self.vtep,
            pod_cidrs: Vec::new(),
            allocate: vec![("10.244.0.0/16".parse().unwrap(), 24)],
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

    /// flaxd with the etcd source and a fixed pod subnet (`--pod-cidr`), serving `/metrics`
    /// and `/healthz` on a loopback port.
    pub async fn start_etcd_fixed(&self, etcd: &[String], ttl: i64, pod_cidr: &str) -> Daemon {
        let pod_cidrs = vec![pod_cidr.parse().unwrap()];
        let mut cfg = self.config();
        cfg.pod_cidrs = pod_cidrs.clone();
        cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        let mut source = self.etcd_config(etcd, ttl);
        source.pod_cidrs = pod_cidrs;
        Daemon::start(cfg, SourceConfig::Etcd(source))
            .await
            .expect("flaxd starts")
    }

    /// The pod subnet in this node's conflist, once written.
    pub async fn await_conflist_subnet(&self) -> String {
        eventually("the conflist", LONG, || async {
            let text = std::fs::read_to_string(&self.conflist).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            Some(
                v["plugins"][0]["ipam"]["ranges"][0][0]["gateway"]
                    .as_str()?
                    .to_owned(),
            )
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
    // Bounded: a server that accepts and never answers fails the test instead of hanging it.
    let buf = tokio::time::timeout(LONG, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        buf
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} from {addr}: no answer within {LONG:?}"));
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

//! Wiring: one membership source, the OVSDB watcher, the reconciler and the metrics server,
//! as tasks of one [`Daemon`] that shuts down cleanly or can be killed as a crash would.
//! Neither removes anything: the node stays a member (until its lease TTL, for the next
//! flaxd to adopt), its OVS rows, its conflist and its masquerade table stay, and pods keep
//! their traffic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use linen::config::Datapath;
use linen::model::BridgeSpec;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::conflist::ConflistSpec;
use crate::desired::{NodeIdentity, TunnelPolicy};
use crate::etcd::{EtcdConfig, EtcdError, EtcdSource};
use crate::file::{FileError, FileSource};
use crate::k8s::KubeSource;
use crate::masq::{Masquerade, NftProgram};
use crate::membership::{Publisher, Snapshot};
use crate::metrics::Metrics;
use crate::overlay::OvsOverlay;
use crate::ovs_watch::watch_ovs;
use crate::reconcile::{Reconciler, ReconcilerConfig};

/// Where membership comes from.
pub enum SourceConfig {
    Etcd(EtcdConfig),
    /// A client from `kube::Config::infer()`, and the Node address type used as VTEP.
    Kube {
        client: kube::Client,
        address_type: String,
    },
    File(PathBuf),
}

/// Everything but the source.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub me: NodeIdentity,
    /// `unix:PATH` or `tcp:IP:PORT`.
    pub ovsdb: String,
    pub bridge: String,
    pub datapath: Datapath,
    /// OpenFlow controller targets for the bridge (validated by
    /// `linen::config::parse_controller`); empty: none. flaxd owns Linen's controller rows, and
    /// the conflist it writes carries the same targets so the plugin agrees.
    pub controllers: Vec<String>,
    /// Key, certificate and CA for `ssl:` controllers (the OVS `SSL` row flaxd keeps).
    pub ssl: Option<linen::model::SslSpec>,
    pub policy: TunnelPolicy,
    /// Where to write the conflist (with the Linux bridge name and underlay MTU it needs).
    pub conflist: Option<ConflistOptions>,
    /// The cluster CIDRs, one per address family (dual-stack: an IPv4 and an IPv6 one).
    pub cluster_cidrs: Vec<IpNet>,
    /// Fixed pod subnets for this node, one per family (else the source's: etcd allocation,
    /// podCIDRs, file).
    pub pod_cidrs: Vec<IpNet>,
    pub metrics_addr: Option<SocketAddr>,
    pub debounce: Duration,
    pub resync: Duration,
    /// Keep the egress masquerade table ([`crate::masq`]); `false` removes one an earlier
    /// run left and creates nothing. Off in [`DaemonConfig::new`], so a daemon embedded in
    /// a test touches no firewall of the namespace it runs in; flaxd's `--ip-masq` flag
    /// defaults to on.
    pub ip_masq: bool,
}

#[derive(Debug, Clone)]
pub struct ConflistOptions {
    pub path: PathBuf,
    pub network: String,
    pub linux_bridge: String,
    pub underlay_mtu: u32,
    /// host-local's `dataDir`; `None`: host-local's default.
    pub ipam_data_dir: Option<PathBuf>,
    /// Where the plugin records which pod holds which hostPort; `None`: its default.
    pub host_port_dir: Option<PathBuf>,
}

impl DaemonConfig {
    /// Defaults for everything but identity and OVSDB address.
    pub fn new(me: NodeIdentity, ovsdb: impl Into<String>) -> Self {
        DaemonConfig {
            me,
            ovsdb: ovsdb.into(),
            bridge: linen::config::DEFAULT_BRIDGE.to_owned(),
            datapath: Datapath::System,
            controllers: Vec::new(),
            ssl: None,
            policy: TunnelPolicy {
                hub: false,
                key: linen::config::TunnelKey::Flow,
            },
            conflist: None,
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("a valid CIDR")],
            pod_cidrs: Vec::new(),
            metrics_addr: None,
            debounce: Duration::from_millis(100),
            resync: Duration::from_secs(60),
            ip_masq: false,
        }
    }

    fn reconciler(&self) -> ReconcilerConfig {
        ReconcilerConfig {
            me: self.me.clone(),
            policy: self.policy,
            bridge: BridgeSpec {
                name: self.bridge.clone(),
                datapath: self.datapath,
                controllers: self.controllers.clone(),
            },
            conflist: self.conflist.as_ref().map(|c| {
                (
                    c.path.clone(),
                    ConflistSpec {
                        network: c.network.clone(),
                        linux_bridge: c.linux_bridge.clone(),
                        ovs_bridge: self.bridge.clone(),
                        ovsdb: self.ovsdb.clone(),
                        controllers: self.controllers.clone(),
                        datapath: self.datapath,
                        key: self.policy.key,
                        cluster_cidrs: self.cluster_cidrs.clone(),
                        underlay_mtu: c.underlay_mtu,
                        vtep: self.me.vtep,
                        ipam_data_dir: c.ipam_data_dir.clone(),
                        host_port_dir: c.host_port_dir.clone(),
                    },
                )
            }),
            pod_cidrs: self.pod_cidrs.clone(),
            debounce: self.debounce,
            resync: self.resync,
            retry: (Duration::from_millis(100), Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("etcd source")]
    Etcd(#[from] EtcdError),
    #[error("file source")]
    File(#[from] FileError),
    #[error("cannot listen on {addr} for metrics")]
    MetricsBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("a daemon task panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

/// A running flaxd.
pub struct Daemon {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), DaemonError>>,
    metrics: Arc<Metrics>,
    members: watch::Receiver<Snapshot>,
    metrics_addr: Option<SocketAddr>,
}

impl Daemon {
    /// Starts every task. Fails only if the metrics address cannot be bound; everything
    /// else (OVSDB, etcd, the API server being down) is retried in the background.
    pub async fn start(cfg: DaemonConfig, source: SourceConfig) -> Result<Daemon, DaemonError> {
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let (publisher, members) = Publisher::new();
        let mut tasks: JoinSet<Result<(), DaemonError>> = JoinSet::new();
        let metrics_addr = match cfg.metrics_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::MetricsBind { addr, source })?;
                let local = listener.local_addr().ok();
                tasks.spawn(infallible(crate::endpoint::serve(
                    listener,
                    metrics.clone(),
                    shutdown.clone(),
                )));
                local
            }
            None => None,
        };
        let ovs_changed = Arc::new(Notify::new());
        tasks.spawn(infallible(watch_ovs(
            cfg.ovsdb.clone(),
            ovs_changed.clone(),
            metrics.clone(),
            shutdown.clone(),
        )));
        let reconciler = Reconciler::new(
            cfg.reconciler(),
            OvsOverlay::new(cfg.ovsdb.clone()).with_ssl(cfg.ssl.clone()),
            metrics.clone(),
        );
        tasks.spawn(infallible(reconciler.run(
            members.clone(),
            ovs_changed,
            shutdown.clone(),
        )));
        let masq = Masquerade::new(
            NftProgram::default(),
            cfg.ip_masq,
            cfg.cluster_cidrs.clone(),
            cfg.pod_cidrs.clone(),
            cfg.me.name.clone(),
            metrics.clone(),
        );
        tasks.spawn(infallible(masq.run(
            members.clone(),
            cfg.resync,
            shutdown.clone(),
        )));
        let token = shutdown.clone();
        match source {
            SourceConfig::Etcd(c) => {
                let source = EtcdSource::new(c).with_metrics(metrics.clone());
                tasks.spawn(async move { Ok(source.run(publisher, token).await?) })
            }
            SourceConfig::File(p) => {
                tasks.spawn(async move { Ok(FileSource::new(p).run(publisher, token).await?) })
            }
            SourceConfig::Kube {
                client,
                address_type,
            } => tasks.spawn(infallible(
                KubeSource::new(client, address_type).run(publisher, token),
            )),
        };
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            // The first task to finish decides: an error (or panic) stops the daemon, a clean
            // end only happens on shutdown. Then wait for the rest (the last lease renewal).
            let mut result = Ok(());
            while let Some(r) = tasks.join_next().await {
                let r = r.map_err(DaemonError::Panicked).and_then(|r| r);
                if result.is_ok() {
                    result = r;
                }
                token.cancel();
            }
            result
        });
        Ok(Daemon {
            shutdown,
            task,
            metrics,
            members,
            metrics_addr,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The membership as the source last published it.
    pub fn members(&self) -> watch::Receiver<Snapshot> {
        self.members.clone()
    }

    /// Where `/metrics` and `/healthz` are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A token that stops the daemon when cancelled (e.g. by a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every task cleanly and returns the daemon's result. The node stays a member:
    /// the etcd lease is renewed once and left for the next flaxd to adopt.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the daemon stops (after [`Daemon::shutdown_token`] is cancelled, or a task
    /// fails).
    pub async fn wait(self) -> Result<(), DaemonError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(DaemonError::Panicked(e)),
        }
    }

    /// Stops every task at once, as a crash would: the etcd lease is not renewed again.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// A task that cannot fail, as one of the daemon's tasks.
async fn infallible(task: impl Future<Output = ()>) -> Result<(), DaemonError> {
    task.await;
    Ok(())
}

//! `flaxd`: parse flags, build the real dependencies, run the daemon until SIGTERM/SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use flaxd::etcd::{EtcdAccess, EtcdConfig, EtcdTls, EtcdUser};
use flaxd::ipnet::IpNet;
use flaxd::linen::config::{Datapath, MAX_VNI, TunnelKey};
use flaxd::{ConflistOptions, Daemon, DaemonConfig, NodeIdentity, SourceConfig, TunnelPolicy};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    Etcd,
    Kube,
    File,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines (colours only when stderr is a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DatapathArg {
    System,
    Netdev,
}

/// Linen's node daemon: keeps this node's VXLAN tunnels in step with cluster membership.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This node's name (the Kubernetes Node name with --source kube).
    #[arg(long, env = "NODE_NAME", required_unless_present = "uninstall")]
    node_name: Option<String>,
    /// This node's VTEP address.
    #[arg(long, env = "FLAXD_VTEP", conflicts_with = "vtep_iface")]
    vtep: Option<IpAddr>,
    /// Take the VTEP address from this interface (its first IPv4, else IPv6 address).
    #[arg(long, env = "FLAXD_VTEP_IFACE")]
    vtep_iface: Option<String>,
    /// The underlay MTU; default: the MTU of the interface holding the VTEP address.
    #[arg(long, env = "FLAXD_UNDERLAY_MTU")]
    underlay_mtu: Option<u32>,
    /// OVSDB address: unix:PATH or tcp:IP:PORT.
    #[arg(long, env = "FLAXD_OVSDB", default_value = flaxd::linen::config::DEFAULT_OVSDB)]
    ovsdb: String,
    /// The OVS bridge.
    #[arg(long, env = "FLAXD_BRIDGE", default_value = flaxd::linen::config::DEFAULT_BRIDGE)]
    bridge: String,
    #[arg(long, env = "FLAXD_DATAPATH", value_enum, default_value = "system")]
    datapath: DatapathArg,
    /// A fixed VXLAN network identifier; default key=flow.
    #[arg(long, env = "FLAXD_VNI")]
    vni: Option<u32>,
    /// This node is the hub of a hub-and-spoke layout: leave its tunnels unprotected.
    #[arg(long, env = "FLAXD_HUB")]
    hub: bool,
    /// The whole pod network (one layer-2 overlay): one CIDR, or an IPv4 and an IPv6 one,
    /// comma-separated, for dual-stack pods (an address of each family per pod).
    #[arg(
        long,
        env = "FLAXD_CLUSTER_CIDR",
        value_delimiter = ',',
        default_value = "10.244.0.0/16"
    )]
    cluster_cidr: Vec<IpNet>,
    /// The prefix length of each node's IPv4 pod subnet, when etcd allocates them.
    #[arg(long, env = "FLAXD_SUBNET_LEN", default_value_t = 24)]
    subnet_len: u8,
    /// The prefix length of each node's IPv6 pod subnet, when etcd allocates them.
    #[arg(long, env = "FLAXD_SUBNET_LEN_V6", default_value_t = 64)]
    subnet_len_v6: u8,
    /// OpenFlow controller for the bridge (`tcp:IP:PORT`, `ssl:IP:PORT`, `unix:PATH`, or the
    /// seed's `IP:PORT`); repeat or comma-separate for several. The bridge keeps switching
    /// (fail_mode=standalone) while no controller is connected.
    #[arg(long, env = "FLAXD_CONTROLLER", value_delimiter = ',')]
    controller: Vec<String>,
    /// For `ssl:` controllers: this switch's private key (PEM file, read by ovs-vswitchd).
    #[arg(long, env = "FLAXD_SSL_PRIVATE_KEY", requires_all = ["ssl_certificate", "ssl_ca_cert"])]
    ssl_private_key: Option<PathBuf>,
    /// For `ssl:` controllers: this switch's certificate (PEM).
    #[arg(long, env = "FLAXD_SSL_CERTIFICATE", requires_all = ["ssl_private_key", "ssl_ca_cert"])]
    ssl_certificate: Option<PathBuf>,
    /// For `ssl:` controllers: the CA certificate the controller's must chain to (PEM).
    #[arg(long, env = "FLAXD_SSL_CA_CERT", requires_all = ["ssl_private_key", "ssl_certificate"])]
    ssl_ca_cert: Option<PathBuf>,
    /// A fixed pod subnet for this node, or one per family comma-separated (default:
    /// allocated by etcd, or the Node's podCIDRs, or this node's entry in the peer file).
    #[arg(long, env = "FLAXD_POD_CIDR", value_delimiter = ',')]
    pod_cidr: Vec<IpNet>,
    #[arg(
        long,
        env = "FLAXD_SOURCE",
        value_enum,
        required_unless_present = "uninstall"
    )]
    source: Option<Source>,
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "FLAXD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "https://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,
    /// The CA etcd's server certificate must chain to (PEM); needed for https:// endpoints.
    #[arg(long, env = "FLAXD_ETCD_CA_CERT")]
    etcd_ca_cert: Option<PathBuf>,
    /// This node's etcd client certificate (PEM); with etcd's --client-cert-auth its common
    /// name is the etcd user.
    #[arg(long, env = "FLAXD_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca_cert"])]
    etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, env = "FLAXD_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// An etcd user for password authentication; the password comes from
    /// --etcd-password-file or the environment variable FLAXD_ETCD_PASSWORD (never a flag:
    /// command lines are world-readable).
    #[arg(long, env = "FLAXD_ETCD_USER")]
    etcd_user: Option<String>,
    /// A file holding the password of --etcd-user (one line).
    #[arg(long, env = "FLAXD_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
    /// Allow plaintext http:// etcd endpoints. Without it they are refused: whoever can write
    /// to etcd joins the pod network.
    #[arg(long, env = "FLAXD_ETCD_INSECURE")]
    etcd_insecure: bool,
    #[arg(long, env = "FLAXD_ETCD_PREFIX", default_value = "/linen")]
    etcd_prefix: String,
    /// Seconds a node that stops renewing its lease stays a member.
    #[arg(long, env = "FLAXD_ETCD_LEASE_TTL", default_value_t = 10)]
    etcd_lease_ttl: i64,
    /// The Node address type used as VTEP with --source kube.
    #[arg(long, env = "FLAXD_KUBE_ADDRESS_TYPE", default_value = flaxd::k8s::DEFAULT_ADDRESS_TYPE)]
    kube_address_type: String,
    /// The peer list (JSON or YAML) with --source file.
    #[arg(long, env = "FLAXD_PEERS_FILE")]
    peers_file: Option<PathBuf>,
    /// Write this node's CNI conflist here (e.g. /etc/cni/net.d/10-linen.conflist).
    #[arg(long, env = "FLAXD_CONFLIST")]
    conflist: Option<PathBuf>,
    /// The CNI network name in the conflist.
    #[arg(long, env = "FLAXD_NETWORK_NAME", default_value = "linen")]
    network_name: String,
    /// Where host-local keeps its leases (the conflist's `ipam.dataDir`); default: its own.
    #[arg(long, env = "FLAXD_IPAM_DATA_DIR")]
    ipam_data_dir: Option<PathBuf>,
    /// The pods' Linux bridge in the conflist.
    #[arg(long, env = "FLAXD_LINUX_BRIDGE", default_value = "kbr0")]
    linux_bridge: String,
    /// Serve /metrics, /healthz and /livez here. Loopback by default: nothing off the node
    /// reaches it unless asked for. The DaemonSet sets the node's address (the kubelet's
    /// httpGet probes and Prometheus connect to the pod IP, which with hostNetwork is the
    /// node's); never 0.0.0.0 on a node with public addresses.
    #[arg(long, env = "FLAXD_METRICS_ADDR", default_value = "127.0.0.1:9109")]
    metrics_addr: SocketAddr,
    /// Masquerade egress (flannel's --ip-masq): traffic from this node's pods to addresses
    /// outside the cluster CIDR leaves with the node's address. flaxd keeps its own nftables
    /// table (`inet linen`), checked and repaired on every resync; `--ip-masq=false` creates
    /// nothing (and removes the table an earlier run left). Needs CAP_NET_ADMIN and `nft`.
    #[arg(
        long,
        env = "FLAXD_IP_MASQ",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    ip_masq: bool,
    /// Where the linen plugin records which pod holds which hostPort (the conflist's
    /// `hostPortDir`); default: the plugin's own (/var/lib/cni/linen/hostports).
    #[arg(long, env = "FLAXD_HOST_PORT_DIR")]
    host_port_dir: Option<PathBuf>,
    /// Seconds between full resyncs.
    #[arg(long, env = "FLAXD_RESYNC", default_value_t = 60)]
    resync: u64,
    /// Log level filter (e.g. `info`, `warn,flaxd=debug`).
    #[arg(long, env = "FLAXD_LOG", default_value = "info")]
    log: String,
    /// Log format on stderr.
    #[arg(long, env = "FLAXD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Do not run: make this node leave the cluster for good (etcd source: revoke its
    /// lease and delete its record, so every peer drops it at once), then exit. Stop the
    /// node's flaxd first: a running flaxd re-registers its node. A stopped or restarted
    /// flaxd keeps its node a member.
    #[arg(long)]
    leave: bool,
    /// Do not run: remove what flaxd keeps on this host outside OVS and the conflist — the
    /// egress masquerade table, if it is Linen's (a table of that name that Linen did not
    /// create is an error and stays) — then exit. Plain exit (SIGTERM) removes nothing.
    #[arg(long, conflicts_with = "leave")]
    uninstall: bool,
    /// With --leave: also release this node's pod subnet allocation, so another node may
    /// be given it. Only for a node decommissioned for good, once its pods are gone (a
    /// node that comes back gets a new subnet; its old pods' addresses could be reused).
    #[arg(long, requires = "leave")]
    release_subnet: bool,
}

/// Logs go to stderr: text (ANSI colours only on a terminal, never in a log file or a
/// container's log) or JSON lines.
fn init_logging(filter: &str, format: LogFormat) -> Result<()> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log {filter:?} is not a log filter"))?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

// One thread is plenty for a node daemon whose work is a few sockets and one reconcile at a
// time, and it keeps memory down: glibc gives every thread that allocates its own arena,
// and a multi-threaded runtime kept ~25 MiB of freed buffers after a 1000-member burst.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(&args.log, args.log_format)?;
    if args.uninstall {
        let removed = flaxd::masq::uninstall(&flaxd::masq::NftProgram::default())
            .await
            .context("cannot remove the egress masquerade table")?;
        tracing::info!(
            table = flaxd::masq::TABLE,
            removed,
            "uninstalled: Linen's masquerade table is gone"
        );
        return Ok(());
    }
    let node_name = args.node_name.clone().context("give --node-name")?;
    if args.leave {
        return leave(&args, &node_name).await;
    }
    let (vtep, iface) = match (args.vtep, &args.vtep_iface) {
        (Some(ip), _) => (ip, flaxd::host::interface_of(ip).ok()),
        (None, Some(i)) => (flaxd::host::interface_address(i)?, Some(i.clone())),
        (None, None) => bail!("give --vtep or --vtep-iface"),
    };
    if !flaxd::linen::naming::is_creatable_ifname(&args.bridge) {
        bail!(
            "--bridge {:?} is not a name Linen creates an interface with (1-15 bytes of ASCII letters, digits, '-', '_' and '.')",
            args.bridge
        );
    }
    if !flaxd::linen::naming::is_valid_ifname(&args.linux_bridge) {
        bail!(
            "--linux-bridge {:?} is not a valid interface name",
            args.linux_bridge
        );
    }
    let key = match args.vni {
        Some(v) if v > MAX_VNI => bail!("--vni {v} is out of range (0 to {MAX_VNI})"),
        Some(v) => TunnelKey::Vni(v),
        None => TunnelKey::Flow,
    };
    let me = NodeIdentity {
        name: node_name.clone(),
        vtep,
    };
    let mut cfg = DaemonConfig::new(me, args.ovsdb.clone());
    cfg.bridge = args.bridge.clone();
    cfg.datapath = match args.datapath {
        DatapathArg::System => Datapath::System,
        DatapathArg::Netdev => Datapath::Netdev,
    };
    cfg.policy = TunnelPolicy { hub: args.hub, key };
    // An empty value (FLAXD_CONTROLLER="") means none.
    cfg.controllers = args
        .controller
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| {
            flaxd::linen::config::parse_controller(t).with_context(|| format!("--controller {t:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    cfg.controllers.sort();
    cfg.controllers.dedup();
    if let (Some(key), Some(cert), Some(ca)) = (
        &args.ssl_private_key,
        &args.ssl_certificate,
        &args.ssl_ca_cert,
    ) {
        // ovs-vswitchd reads them: absolute paths, files that exist now.
        let path = |p: &PathBuf, what: &str| -> Result<String> {
            let abs =
                std::fs::canonicalize(p).with_context(|| format!("{what} {}", p.display()))?;
            abs.to_str()
                .map(str::to_owned)
                .with_context(|| format!("{what} {} is not UTF-8", abs.display()))
        };
        cfg.ssl = Some(flaxd::linen::model::SslSpec {
            private_key: path(key, "--ssl-private-key")?,
            certificate: path(cert, "--ssl-certificate")?,
            ca_cert: path(ca, "--ssl-ca-cert")?,
        });
    }
    cfg.cluster_cidrs = flaxd::membership::pod_cidrs(&args.cluster_cidr)
        .filter(|c| !c.is_empty())
        .with_context(|| {
            format!(
                "--cluster-cidr {:?}: give one CIDR, or one IPv4 and one IPv6 CIDR",
                args.cluster_cidr
            )
        })?;
    cfg.pod_cidrs = flaxd::membership::pod_cidrs(&args.pod_cidr).with_context(|| {
        format!(
            "--pod-cidr {:?}: at most one IPv4 and one IPv6 subnet",
            args.pod_cidr
        )
    })?;
    cfg.metrics_addr = Some(args.metrics_addr);
    cfg.resync = Duration::from_secs(args.resync.max(1));
    cfg.ip_masq = args.ip_masq;
    if let Some(path) = &args.conflist {
        let underlay_mtu = match (args.underlay_mtu, &iface) {
            (Some(m), _) => m,
            (None, Some(i)) => flaxd::host::interface_mtu(i)?,
            (None, None) => bail!("cannot tell the underlay MTU: give --underlay-mtu"),
        };
        cfg.conflist = Some(ConflistOptions {
            path: path.clone(),
            network: args.network_name.clone(),
            linux_bridge: args.linux_bridge.clone(),
            underlay_mtu,
            ipam_data_dir: args.ipam_data_dir.clone(),
            host_port_dir: args.host_port_dir.clone(),
        });
    }
    let source = match args.source.context("give --source")? {
        Source::Etcd => SourceConfig::Etcd(EtcdConfig {
            endpoints: args.etcd_endpoints.clone(),
            access: etcd_access(&args)?,
            prefix: args.etcd_prefix.clone(),
            lease_ttl: args.etcd_lease_ttl,
            node: node_name.clone(),
            vtep,
            pod_cidrs: cfg.pod_cidrs.clone(),
            allocate: cfg
                .cluster_cidrs
                .iter()
                .map(|c| match c {
                    IpNet::V4(_) => (*c, args.subnet_len),
                    IpNet::V6(_) => (*c, args.subnet_len_v6),
                })
                .collect(),
        }),
        Source::Kube => {
            let config = flaxd::k8s::kube::Config::infer()
                .await
                .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
            let client = flaxd::k8s::kube::Client::try_from(config)
                .context("cannot build the Kubernetes client")?;
            SourceConfig::Kube {
                client,
                address_type: args.kube_address_type.clone(),
            }
        }
        Source::File => SourceConfig::File(
            args.peers_file
                .clone()
                .context("--source file needs --peers-file")?,
        ),
    };
    tracing::info!(node = node_name, %vtep, source = ?args.source, "flaxd starting");
    let daemon = Daemon::start(cfg, source).await?;
    let token = daemon.shutdown_token();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    daemon.wait().await?;
    tracing::info!("flaxd stopped");
    Ok(())
}

/// TLS, user and plaintext options for etcd; checked against the endpoints before anything
/// else runs, so a refused plaintext endpoint stops flaxd at once.
fn etcd_access(args: &Args) -> Result<EtcdAccess> {
    let tls = args.etcd_ca_cert.as_ref().map(|ca| EtcdTls {
        ca: ca.clone(),
        identity: args.etcd_cert.clone().zip(args.etcd_key.clone()),
    });
    let user = match &args.etcd_user {
        None => None,
        Some(name) => {
            let password = match &args.etcd_password_file {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("--etcd-password-file {}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                None => std::env::var("FLAXD_ETCD_PASSWORD").context(
                    "--etcd-user needs --etcd-password-file or FLAXD_ETCD_PASSWORD in the environment",
                )?,
            };
            Some(EtcdUser {
                name: name.clone(),
                password,
            })
        }
    };
    let access = EtcdAccess {
        tls,
        user,
        allow_plaintext: args.etcd_insecure,
    };
    flaxd::etcd::connect_options(&args.etcd_endpoints, &access)
        .context("--etcd-endpoints and the etcd TLS options")?;
    if args.etcd_insecure {
        tracing::warn!(
            "--etcd-insecure: plaintext etcd allowed; anyone who can reach etcd can join the pod network"
        );
    }
    Ok(access)
}

/// `--leave`: the explicit departure of this node.
async fn leave(args: &Args, node_name: &str) -> Result<()> {
    match args.source.context("give --source")? {
        Source::Etcd => {
            let mut client =
                flaxd::etcd::connect(&args.etcd_endpoints, &etcd_access(args)?).await?;
            let left = flaxd::etcd::leave(&mut client, &args.etcd_prefix, node_name)
                .await
                .with_context(|| format!("node {} cannot leave", node_name))?;
            match left {
                flaxd::etcd::Left {
                    was_member: false, ..
                } => tracing::info!(node = node_name, "not a member; nothing to do"),
                flaxd::etcd::Left { revoked, .. } => tracing::info!(
                    node = node_name,
                    lease = ?revoked,
                    "left: record deleted, lease revoked; every peer drops this node now"
                ),
            }
            if args.release_subnet {
                let released =
                    flaxd::etcd::release_subnets(&mut client, &args.etcd_prefix, node_name)
                        .await
                        .with_context(|| format!("node {} cannot release its subnet", node_name))?;
                tracing::info!(node = args.node_name, ?released, "pod subnet released");
            }
            Ok(())
        }
        Source::Kube => bail!(
            "with --source kube the node leaves when its Node object is deleted (`kubectl delete node {}`)",
            node_name
        ),
        Source::File => bail!(
            "with --source file the node leaves when it is removed from the peer file on every node"
        ),
    }
}

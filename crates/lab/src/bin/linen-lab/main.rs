//! `linen-lab`: parse, call the library, map the error. The demo's script of
//! steps lives in `demo.rs`.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use linen_lab::{
    Cluster, ClusterSpec, IpFamily, LabState, Membership, Runtime, StopMode, Topology,
    UnderlayFamily, ping, report, traffic,
};

#[derive(Parser)]
#[command(version, about = "A multi-node Linen cluster on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Lab {
    /// Lab name; namespaces are <name>-ul, <name>-n1.., pods <name>-n1-p1..
    #[arg(long, default_value = "linen")]
    name: String,
    /// Lab directory [default: /run/linen-lab/<name>]
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Lab {
    fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| linen_lab::default_dir(&self.name))
    }

    /// The recorded state of a lab that must exist.
    fn state(&self) -> Result<LabState> {
        let dir = self.dir();
        linen_lab::load(&dir)?.with_context(|| {
            format!(
                "lab {} is not running (no state in {}); start it with `linen-lab up --name {}`",
                self.name,
                dir.display(),
                self.name
            )
        })
    }

    /// Locks the running lab to change it.
    fn open(&self) -> Result<Cluster> {
        Ok(Cluster::open(&self.name, &self.dir())?)
    }
}

#[derive(clap::Args, Clone)]
struct Shape {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, value_enum, default_value_t = TopologyArg::Mesh)]
    topology: TopologyArg,
    #[arg(long, default_value_t = 2)]
    pods_per_node: u16,
    /// Underlay MTU; pods get 50 less (VXLAN).
    #[arg(long, default_value_t = linen_lab::spec::DEFAULT_UNDERLAY_MTU)]
    mtu: u32,
    /// How nodes learn about each other: etcd (one etcd for the lab, a flaxd
    /// per node keeps tunnels and conflists in step) or static (the lab
    /// writes vtepIPs into conflists and re-applies them on changes).
    #[arg(long, value_enum, default_value_t = MembershipArg::Etcd)]
    membership: MembershipArg,
    /// With etcd: seconds a node whose flaxd crashed stays a member.
    #[arg(long, default_value_t = linen_lab::spec::DEFAULT_LEASE_TTL)]
    lease_ttl: u32,
    /// Point every node's OVS bridge at a real OpenFlow controller of its own
    /// (ovs-testcontroller, a learning switch, on the node's loopback): set by flaxd
    /// (--controller) with etcd, by the conflist's `controller` with static membership.
    #[arg(long)]
    controller: bool,
    /// Who runs the pods' CNI chain: the lab itself (cni), or a containerd per node asked
    /// over CRI as kubelet asks (containerd; needs --membership etcd).
    #[arg(long, value_enum, default_value_t = RuntimeArg::Cni)]
    runtime: RuntimeArg,
    /// The pods' address families: ipv4, ipv6 (from fd00:10:244::/48), or dual (an IPv4 and
    /// an IPv6 address per pod, from 10.244.0.0/16 and fd00:10:244::/48; the ping matrix
    /// covers both).
    #[arg(long, value_enum, default_value_t = IpFamilyArg::Ipv4)]
    ip_family: IpFamilyArg,
    /// The VTEPs' address family: ipv4, or ipv6 (every node also gets fd00:10:245:2::<i>/64
    /// and the tunnels run over IPv6; pods get 70 bytes less than the underlay MTU).
    #[arg(long, value_enum, default_value_t = UnderlayArg::Ipv4)]
    underlay: UnderlayArg,
}

impl Shape {
    fn spec(&self, lab: &Lab) -> ClusterSpec {
        ClusterSpec {
            dir: Some(lab.dir()),
            topology: match self.topology {
                TopologyArg::Mesh => Topology::Mesh,
                TopologyArg::Hub => Topology::Hub,
            },
            pods_per_node: self.pods_per_node,
            underlay_mtu: self.mtu,
            membership: match self.membership {
                MembershipArg::Etcd => Membership::Etcd,
                MembershipArg::Static => Membership::Static,
            },
            lease_ttl: self.lease_ttl,
            controller: self.controller,
            underlay: match self.underlay {
                UnderlayArg::Ipv4 => UnderlayFamily::Ipv4,
                UnderlayArg::Ipv6 => UnderlayFamily::Ipv6,
            },
            ip_family: match self.ip_family {
                IpFamilyArg::Ipv4 => IpFamily::Ipv4,
                IpFamilyArg::Dual => IpFamily::Dual,
                IpFamilyArg::Ipv6 => IpFamily::Ipv6,
            },
            runtime: match self.runtime {
                RuntimeArg::Cni => Runtime::Cni,
                RuntimeArg::Containerd => Runtime::Containerd,
            },
            ..ClusterSpec::new(&lab.name, self.nodes)
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create the underlay and the nodes (each with its own OVS), verify
    /// node-to-node pings, wire the pods through CNI, and leave it running.
    Up {
        #[command(flatten)]
        lab: Lab,
        #[command(flatten)]
        shape: Shape,
    },
    /// CNI DEL every pod, stop everything the lab started, delete its
    /// namespaces and directory.
    Down {
        #[command(flatten)]
        lab: Lab,
    },
    /// Nodes, pods with their addresses, Linen's tunnels per node.
    Status {
        #[command(flatten)]
        lab: Lab,
    },
    /// Run a command in a node's namespace (with OVS_RUNDIR set to its OVS)
    /// or in a pod's.
    Exec {
        #[command(flatten)]
        lab: Lab,
        /// A node (<lab>-n1, n1 or 1) or a pod (<lab>-n1-p1 or n1-p1).
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Every pod pings every other pod and its gateway; fails if any does not answer.
    #[command(alias = "check")]
    Ping {
        #[command(flatten)]
        lab: Lab,
    },
    /// A TCP transfer (iperf3) between pods on two nodes, and node to node
    /// over the underlay for comparison.
    #[command(alias = "iperf")]
    Tcp {
        #[command(flatten)]
        lab: Lab,
        /// Client pod [default: the first pod of the first node]
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// Server pod [default: the first pod of the last node]
        #[arg(long, requires = "from")]
        to: Option<String>,
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// Add a pod to a node (CNI ADD).
    AddPod {
        #[command(flatten)]
        lab: Lab,
        node: String,
        /// A hostPort, HOST:CONTAINER[/tcp|udp] (e.g. 8080:80/tcp); repeatable. Passed to
        /// the chain as runtimeConfig.portMappings; the node's portmap forwards it.
        #[arg(long = "host-port", value_name = "HOST:CONTAINER[/PROTO]")]
        host_ports: Vec<linen_lab::pod::PortMapping>,
    },
    /// Delete a pod (CNI DEL, then its namespace).
    DelPod {
        #[command(flatten)]
        lab: Lab,
        pod: String,
    },
    /// A new node joins; the others gain a tunnel to it (with etcd, their
    /// flaxd does it; static: their conflists are rewritten and re-applied).
    AddNode {
        #[command(flatten)]
        lab: Lab,
        /// Pods to add on the new node.
        #[arg(long, default_value_t = 0)]
        pods: u16,
    },
    /// A node leaves with its pods; the others' tunnels to it are removed
    /// (with etcd: its flaxd gets SIGTERM, then `flaxd --leave` revokes its
    /// lease).
    DelNode {
        #[command(flatten)]
        lab: Lab,
        node: String,
    },
    /// Operate a node's flaxd (etcd labs): `stop` (SIGTERM) and `kill`
    /// (SIGKILL, a crash) both keep the node a member until its lease TTL runs
    /// out; `start` within the TTL adopts it (peers never see it leave).
    Flaxd {
        #[command(flatten)]
        lab: Lab,
        node: String,
        #[arg(value_enum)]
        action: FlaxdAction,
    },
    /// Crash a node's ovs-vswitchd (SIGKILL) and start it again, as a
    /// supervisor would.
    RestartVswitchd {
        #[command(flatten)]
        lab: Lab,
        node: String,
    },
    /// Kill a node's ovsdb-server (SIGKILL, as a crash) and start it again over
    /// the same database; ovs-vswitchd keeps forwarding meanwhile.
    RestartOvsdb {
        #[command(flatten)]
        lab: Lab,
        node: String,
    },
    /// Up, status, ping matrix, TCP throughput over the overlay and the
    /// underlay, then down (unless --keep).
    Demo {
        #[command(flatten)]
        lab: Lab,
        #[command(flatten)]
        shape: Shape,
        /// Leave the lab running at the end.
        #[arg(long)]
        keep: bool,
        /// Length of each TCP transfer.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TopologyArg {
    Mesh,
    Hub,
}

#[derive(Clone, Copy, ValueEnum)]
enum UnderlayArg {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Copy, ValueEnum)]
enum IpFamilyArg {
    Ipv4,
    Ipv6,
    Dual,
}

#[derive(Clone, Copy, ValueEnum)]
enum RuntimeArg {
    Cni,
    Containerd,
}

#[derive(Clone, Copy, ValueEnum)]
enum MembershipArg {
    Etcd,
    Static,
}

#[derive(Clone, Copy, ValueEnum)]
enum FlaxdAction {
    Start,
    Stop,
    Kill,
}

/// The lab this process is building or running (`up` until it detaches, `demo` until it
/// is down): torn down if linen-lab is interrupted.
static HELD: std::sync::Mutex<Option<(String, PathBuf)>> = std::sync::Mutex::new(None);

/// Set once a signal arrived: the signal thread is tearing down and exits the process;
/// the main thread (whose step fails as the lab goes away) must not end it first.
static ABORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks the lab `name` in `dir` as this process's until [`release`].
pub(crate) fn hold(name: &str, dir: &std::path::Path) {
    *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some((name.to_owned(), dir.to_owned()));
}

/// The lab is down or detached: a signal no longer concerns it.
pub(crate) fn release() {
    HELD.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// On SIGINT, SIGTERM or SIGHUP, one thread tears down the lab this process holds — CNI
/// DEL, flaxd, etcd, OVS, whatever still runs in the lab's namespaces, the namespaces and
/// the directory — and exits 128+signal. A signal handler could do none of that safely:
/// signal-hook's handlers only write to a pipe the thread reads. (Blocking the signals and
/// `sigwait`ing instead would hand the blocked mask to every daemon the lab starts: they
/// then ignore SIGTERM.)
fn on_signals_tear_down() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Some(sig) = signals.forever().next() else {
                return;
            };
            ABORTING.store(true, std::sync::atomic::Ordering::SeqCst);
            let name = signal_hook::low_level::signal_name(sig).unwrap_or("signal");
            let held = HELD.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((lab, dir)) = held {
                eprintln!("linen-lab: {name}: tearing lab {lab} down");
                match linen_lab::abort(&lab, &dir) {
                    Ok(()) => eprintln!("linen-lab: lab {lab} is down"),
                    Err(e) => eprintln!("linen-lab: tearing lab {lab} down: {e:#}"),
                }
            }
            std::process::exit(128 + sig);
        })
        .context("start the signal thread")?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = on_signals_tear_down() {
        eprintln!("linen-lab: {e:#}");
        return ExitCode::FAILURE;
    }
    // The demo narrates its own steps; library logs would only repeat them.
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("linen-lab: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Interrupted: the signal thread finishes the teardown and exits 128+signal.
    while ABORTING.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::park();
    }
    code
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up { lab, shape } => {
            let spec = shape.spec(&lab);
            hold(&spec.name, &spec.lab_dir());
            let state = Cluster::up(spec)?.detach()?;
            release();
            print_status(&state.dir)?;
        }
        Command::Down { lab } => {
            linen_lab::down(&lab.name, &lab.dir())?;
            eprintln!("lab {} is down", lab.name);
        }
        Command::Status { lab } => match linen_lab::status(&lab.dir())? {
            Some((state, nodes)) => print!("{}", report::status(&state, &nodes)),
            None => println!(
                "lab {}: not running (no state in {})",
                lab.name,
                lab.dir().display()
            ),
        },
        Command::Exec {
            lab,
            target,
            command,
        } => return exec(&lab, &target, &command),
        Command::Ping { lab } => {
            let matrix = ping::run(&lab.state()?);
            print!("{}", matrix.render());
            if !matrix.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Tcp {
            lab,
            from,
            to,
            seconds,
        } => {
            let state = lab.state()?;
            let (client, server) = match (from, to) {
                (Some(from), Some(to)) => (pod(&lab, &state, &from)?, pod(&lab, &state, &to)?),
                _ => traffic::cross_node_pods(&state)
                    .context("the TCP test needs wired pods on two different nodes")?,
            };
            demo::transfers(&state, client, server, seconds)?;
        }
        Command::AddPod {
            lab,
            node,
            host_ports,
        } => {
            let pod = lab.open()?.add_pod_with_ports(&node, &host_ports)?;
            print!("{}", report::pods_table(&single(&lab, pod)?));
        }
        Command::DelPod { lab, pod } => {
            lab.open()?.del_pod(&pod)?;
            eprintln!("pod {pod} deleted");
        }
        Command::AddNode { lab, pods } => {
            let mut cluster = lab.open()?;
            let node = cluster.add_node()?;
            if pods > 0 {
                cluster.add_pods(&[(node.index, pods)])?;
            }
            let how = match cluster.state().membership {
                Membership::Etcd => "every other node's flaxd added a tunnel to it",
                Membership::Static => "other nodes' conflists rewritten and tunnels updated",
            };
            drop(cluster);
            eprintln!("node {} joined ({}); {how}", node.name, node.underlay_ip);
            print_status(&lab.dir())?;
        }
        Command::DelNode { lab, node } => {
            let mut cluster = lab.open()?;
            cluster.del_node(&node)?;
            let how = match cluster.state().membership {
                Membership::Etcd => {
                    "flaxd --leave revoked its lease; the others dropped their tunnels"
                }
                Membership::Static => "other nodes' tunnels to it removed",
            };
            drop(cluster);
            eprintln!("node {node} left; {how}");
            print_status(&lab.dir())?;
        }
        Command::Flaxd { lab, node, action } => {
            let mut cluster = lab.open()?;
            match action {
                FlaxdAction::Start => {
                    let pid = cluster.start_flaxd(&node)?;
                    eprintln!("flaxd of {node} runs (pid {pid})");
                }
                FlaxdAction::Stop => {
                    cluster.stop_flaxd(&node, StopMode::Clean)?;
                    let ttl = cluster.state().etcd.as_ref().map_or(0, |e| e.lease_ttl);
                    eprintln!(
                        "flaxd of {node} stopped; {node} stays a member for its lease TTL ({ttl}s), for a new flaxd to adopt"
                    );
                }
                FlaxdAction::Kill => {
                    cluster.stop_flaxd(&node, StopMode::Crash)?;
                    let ttl = cluster.state().etcd.as_ref().map_or(0, |e| e.lease_ttl);
                    eprintln!(
                        "flaxd of {node} killed; the others drop it when its lease expires ({ttl}s)"
                    );
                }
            }
        }
        Command::RestartVswitchd { lab, node } => {
            lab.open()?.restart_vswitchd(&node)?;
            eprintln!("ovs-vswitchd of {node} restarted");
        }
        Command::RestartOvsdb { lab, node } => {
            lab.open()?.restart_ovsdb_server(&node)?;
            eprintln!("ovsdb-server of {node} restarted");
        }
        Command::Demo {
            lab,
            shape,
            keep,
            seconds,
        } => return demo::run(shape.spec(&lab), keep, seconds),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(dir: &std::path::Path) -> Result<()> {
    if let Some((state, nodes)) = linen_lab::status(dir)? {
        print!("{}", report::status(&state, &nodes));
    }
    Ok(())
}

fn pod<'a>(lab: &Lab, state: &'a LabState, name: &str) -> Result<&'a linen_lab::Pod> {
    state
        .pod(name)
        .with_context(|| format!("lab {} has no pod {name}", lab.name))
}

/// A state holding only `pod`, for printing one row.
fn single(lab: &Lab, pod: linen_lab::Pod) -> Result<LabState> {
    let mut state = lab.state()?;
    state.pods = vec![pod];
    Ok(state)
}

fn exec(lab: &Lab, target: &str, command: &[String]) -> Result<ExitCode> {
    let state = lab.state()?;
    let (program, args) = command.split_first().context("no command given")?;
    let mut cmd = if let Some(node) = state.node(target) {
        node.command(program)
    } else if let Some(pod) = state.pod(target) {
        pod.netns.command(program)
    } else {
        bail!(
            "lab {} has no node or pod {target} (nodes: {}; pods: {})",
            lab.name,
            state
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            state
                .pods
                .iter()
                .map(|p| p.short_name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let status = cmd
        .args(args)
        .status()
        .with_context(|| format!("run {program} in {target}"))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

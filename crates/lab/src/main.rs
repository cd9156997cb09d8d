//! `linen-lab`: parse, call the library, map the error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use linen_lab::{Cluster, ClusterSpec, LabState, NodeStatus, Owner, Topology};

#[derive(Parser)]
#[command(version, about = "A multi-node Linen cluster on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Lab {
    /// Lab name; namespaces are <name>-ul and <name>-n1..
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
}

#[derive(Subcommand)]
enum Command {
    /// Create the underlay and the nodes, start OVS, verify node-to-node pings.
    Up {
        #[command(flatten)]
        lab: Lab,
        #[arg(long)]
        nodes: usize,
        #[arg(long, value_enum, default_value_t = TopologyArg::Mesh)]
        topology: TopologyArg,
        #[arg(long, default_value_t = 2)]
        pods_per_node: u16,
        #[arg(long, default_value_t = linen_lab::spec::DEFAULT_UNDERLAY_MTU)]
        mtu: u32,
    },
    /// Stop everything the lab started and delete its namespaces and directory.
    Down {
        #[command(flatten)]
        lab: Lab,
    },
    /// Show the nodes and whether their OVS daemons are alive.
    Status {
        #[command(flatten)]
        lab: Lab,
    },
    /// Run a command in a node's namespace, with OVS_RUNDIR set to its OVS.
    Exec {
        #[command(flatten)]
        lab: Lab,
        /// Node name (<lab>-n1), n1 or 1.
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TopologyArg {
    Mesh,
    Hub,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("linen-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up {
            lab,
            nodes,
            topology,
            pods_per_node,
            mtu,
        } => {
            let spec = ClusterSpec {
                dir: Some(lab.dir()),
                topology: match topology {
                    TopologyArg::Mesh => Topology::Mesh,
                    TopologyArg::Hub => Topology::Hub,
                },
                pods_per_node,
                underlay_mtu: mtu,
                ..ClusterSpec::new(&lab.name, nodes)
            };
            let state = Cluster::up(spec)?.detach()?;
            let nodes = linen_lab::status(&state.dir)?.map(|(_, n)| n);
            print_status(&state, &nodes.unwrap_or_default());
        }
        Command::Down { lab } => {
            linen_lab::down(&lab.name, &lab.dir())?;
            eprintln!("lab {} is down", lab.name);
        }
        Command::Status { lab } => match linen_lab::status(&lab.dir())? {
            Some((state, nodes)) => print_status(&state, &nodes),
            None => println!(
                "lab {}: not running (no state in {})",
                lab.name,
                lab.dir().display()
            ),
        },
        Command::Exec { lab, node, command } => {
            let dir = lab.dir();
            let state = linen_lab::load(&dir)?
                .with_context(|| format!("lab {} has no state in {}", lab.name, dir.display()))?;
            let Some(node) = state.node(&node) else {
                bail!("lab {} has no node {node}", lab.name);
            };
            let (program, args) = command.split_first().context("no command given")?;
            let status = node
                .command(program)
                .args(args)
                .status()
                .with_context(|| format!("run {program} in {}", node.name))?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(state: &LabState, nodes: &[NodeStatus]) {
    let alive = |pid: Option<i32>| pid.map_or("dead".to_owned(), |p| format!("up ({p})"));
    let topology = match state.topology {
        Topology::Mesh => "mesh",
        Topology::Hub => "hub",
    };
    let owner = match state.owner {
        Owner::Detached => "detached".to_owned(),
        Owner::Process { pid } => format!("owned by pid {pid}"),
    };
    println!(
        "lab {} ({topology}, {} nodes, {owner}) in {}",
        state.name,
        state.nodes.len(),
        state.dir.display()
    );
    println!(
        "{:<14} {:<28} {:<16} {:<5} {:<16} {:<14} {:<14}",
        "NODE", "NETNS", "UNDERLAY", "MTU", "PODS", "OVSDB", "VSWITCHD"
    );
    for n in nodes {
        let netns = if n.netns_exists {
            n.node.netns_path.display().to_string()
        } else {
            format!("(missing) {}", n.node.netns.name())
        };
        println!(
            "{:<14} {:<28} {:<16} {:<5} {:<16} {:<14} {:<14}",
            n.node.name,
            netns,
            n.node.underlay_ip.to_string(),
            n.node.underlay_mtu,
            n.node.pods.node_cidr.to_string(),
            alive(n.ovsdb_server),
            alive(n.ovs_vswitchd),
        );
    }
}

//! `linen-lab`: a multi-node Linen cluster on one Linux machine.
//!
//! Each simulated node is a network namespace with its own real Open vSwitch
//! (userspace datapath), joined to the others by a Linux bridge in a lab-owned
//! underlay namespace. The host's own namespace is never touched, and every
//! address lives only inside the lab's namespaces.
//!
//! ```no_run
//! use linen_lab::{Cluster, ClusterSpec};
//! let cluster = Cluster::up(ClusterSpec::new("demo", 3))?;
//! for node in cluster.nodes() {
//!     println!("{} {} {}", node.name, node.netns_path.display(), node.underlay_ip);
//! }
//! // Dropping `cluster` tears the lab down.
//! # Ok::<(), linen_lab::Error>(())
//! ```

pub mod cluster;
pub mod cmd;
pub mod conflist;
pub mod manage;
mod members;
pub mod netns;
pub mod node;
pub mod overlay;
pub mod ovs;
pub mod ping;
pub mod pod;
pub mod preflight;
pub mod report;
pub mod spec;
pub mod state;
pub mod traffic;
pub mod underlay;
pub mod wait;

pub use cluster::Cluster;
pub use ipnet;
pub use manage::{NodeStatus, Tunnels, down, load, status};
pub use netns::{Netns, NetnsGuard};
pub use node::{Node, PodRange, Role};
pub use ovs::{Daemon, Ovs};
pub use pod::Pod;
pub use spec::{ClusterSpec, Topology, default_dir};
pub use state::{LabState, Owner};
pub use underlay::Underlay;

/// Every failure of the library, by the module it came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    #[error(transparent)]
    Preflight(#[from] preflight::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Underlay(#[from] underlay::Error),
    #[error(transparent)]
    Ovs(#[from] ovs::Error),
    #[error(transparent)]
    Node(#[from] node::Error),
    #[error(transparent)]
    Conflist(#[from] conflist::Error),
    #[error(transparent)]
    Pod(#[from] pod::Error),
    #[error(transparent)]
    Overlay(#[from] overlay::Error),
    #[error(transparent)]
    Traffic(#[from] traffic::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error: cause: cause`, for logs where only a string fits.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

//! `linen-lab`: a multi-node Linen cluster on one Linux machine.
//!
//! Each simulated node is a network namespace with its own real Open vSwitch
//! (userspace datapath), joined to the others by a Linux bridge in a lab-owned
//! underlay namespace. Pods are network namespaces wired through the real CNI
//! chain — the reference `bridge` plugin with `host-local`, then `linen` —
//! run by the `cni` crate's runtime inside the node's namespace. The host's
//! own namespace is never touched, and every address lives only inside the
//! lab's namespaces.
//!
//! ```no_run
//! use linen_lab::{Cluster, ClusterSpec, ping, traffic};
//! let mut cluster = Cluster::up(ClusterSpec::new("demo", 3))?; // 2 pods per node
//! let state = cluster.state();
//! for node in &state.nodes {
//!     // The conflist the node's pods were wired with (also on disk).
//!     let conflist = node.conflist(state);
//!     println!("{} {} {}", node.name, node.underlay_ip, node.conflist_path().display());
//!     # let _ = conflist;
//! }
//! assert!(ping::run(state).passed());
//! let (client, server) = traffic::cross_node_pods(state).unwrap();
//! println!("{:.0} Mbit/s", traffic::between_pods(client, server, 3)?.throughput.mbps);
//! let pod = cluster.add_pod("n1")?; // CNI ADD; `del_pod`, `add_node`, `del_node` too
//! println!("{} {:?}", pod.name, pod.ip);
//! // Dropping `cluster` tears the lab down (CNI DEL of every pod first).
//! # Ok::<(), linen_lab::Error>(())
//! ```

pub mod cluster;
pub mod cmd;
pub mod conflist;
pub mod cri;
mod daemons;
pub mod etcd;
pub mod etcd_auth;
pub mod flaxd;
pub mod manage;
mod members;
pub mod netns;
pub mod node;
pub mod overlay;
pub mod ovs;
pub mod ping;
pub mod pki;
pub mod pod;
pub mod preflight;
pub mod probe;
pub mod process;
pub mod report;
pub mod spec;
pub mod state;
pub mod stream;
pub mod traffic;
pub mod underlay;
pub mod wait;

pub use cluster::Cluster;
pub use flaxd::StopMode;
pub use ipnet;
pub use manage::{
    EtcdStatus, FlaxdStatus, NodeStatus, Tunnels, abort, down, etcd_status, load, status,
};
pub use netns::{Netns, NetnsGuard};
pub use node::{Node, PodRange, Role};
pub use ovs::{Daemon, Ovs};
pub use pod::Pod;
pub use spec::{ClusterSpec, IpFamily, Membership, Runtime, Topology, UnderlayFamily, default_dir};
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
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
    #[error(transparent)]
    Flaxd(#[from] flaxd::Error),
    #[error(transparent)]
    Probe(#[from] probe::Error),
    #[error(transparent)]
    Cri(#[from] cri::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error: cause: cause`, for logs where only a string fits: linen's one rendering
/// ([`linen::error::chain`]), each cause said once.
pub use linen::error::chain as error_chain;

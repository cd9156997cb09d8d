//! flaxd, Linen's node daemon: keeps this node's VXLAN tunnels in step with cluster
//! membership, on every node.
//!
//! - Membership sources publish [`membership::Snapshot`]s: [`etcd`] (self-registration under
//!   a lease, list + watch, pod subnet allocation), [`k8s`] (a watcher on Node objects),
//!   [`file`] (a peer list re-read on change).
//! - [`reconcile::Reconciler`] turns a snapshot into tunnels with the pure
//!   [`desired::desired`] and applies them through an [`overlay::Overlay`] — in production
//!   [`linen::ovs::Ovs::ensure`], the same OVS data model the plugin uses. It runs on every
//!   membership change, every OVSDB change ([`ovs_watch`]) and a periodic resync, debounced,
//!   retrying with [`backoff::Backoff`]; it also writes this node's [`conflist`].
//! - [`masq::Masquerade`] keeps the node's egress masquerade table (nftables) in step, at
//!   start and on every resync.
//! - [`daemon::Daemon`] wires it all, with [`metrics`] on `/metrics` and `/healthz`
//!   served by the hardened [`endpoint`].

pub mod backoff;
pub mod conflist;
pub mod daemon;
pub mod desired;
pub mod endpoint;
pub mod etcd;
pub mod file;
pub mod host;
pub mod k8s;
pub mod masq;
pub mod membership;
pub mod metrics;
pub mod overlay;
pub mod ovs_watch;
pub mod reconcile;
pub mod subnet;

pub use daemon::{ConflistOptions, Daemon, DaemonConfig, DaemonError, SourceConfig};
pub use desired::{NodeIdentity, TunnelPolicy};
pub use membership::{Member, Membership, Snapshot};
/// Re-exported: they appear in flaxd's API.
pub use {ipnet, linen};

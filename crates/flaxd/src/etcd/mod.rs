//! The etcd v3 membership source.
//!
//! Layout under a prefix (default `/linen`):
//! - `<prefix>/nodes/<name>` = `{"vtep": IP, "podCIDR": CIDR}`, written by each flaxd under
//!   a lease it keeps alive. A restart is not a departure: flaxd exits without revoking the
//!   lease and the next flaxd of the node adopts record and lease ([`register`]), so peers
//!   see nothing. A node whose flaxd stops renewing for longer than the TTL (crashed,
//!   partitioned, powered off) disappears when the lease expires; a decommissioned node
//!   leaves at once with [`leave`] (`flaxd --leave`), which revokes the lease.
//! - `<prefix>/subnets/<net>-<len>` = the owning node's name: pod subnet allocations.
//!   **Persistent, not under the lease**: a node that is down longer than the TTL still has
//!   pods (and host-local's on-disk reservations) using addresses of its subnet, so handing
//!   the subnet to another node would create duplicate addresses. A restarted node finds
//!   its allocation by value and reuses it. A decommissioned node releases it with
//!   `flaxd --leave --release-subnet` ([`release_subnets`]), once its pods are gone.
//!
//! Allocation is an etcd transaction `if create_revision(key) == 0 and no allocation changed
//! since it was read then put(key, name)`: of two nodes racing for one subnet (or for two
//! overlapping ones), exactly one wins, and the other reads again. A fixed `--pod-cidr` is
//! recorded by the very same transaction; if another node's allocation overlaps it, the node
//! refuses to run with it ([`EtcdError::SubnetTaken`]) rather than share addresses.

mod access;
mod follow;
mod register;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use etcd_client;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

pub use access::{AccessError, EtcdAccess, EtcdTls, EtcdUser, connect_options};
pub use follow::{Resume, follow_members};
pub use register::{ANSWER_WINDOW, Left, holder_key, leave};

use crate::backoff::Backoff;
use crate::membership::{MemberRecord, Publisher};
use crate::metrics::Metrics;
use crate::subnet::{Slices, SubnetError, overlaps, parse_subnet_key, subnet_key, subnets_prefix};

/// Bound on every unary etcd request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at allocating a subnet before the error is reported (and retried later).
const ALLOCATION_ATTEMPTS: usize = 32;

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// TLS, authentication, and whether plaintext is allowed.
    pub access: EtcdAccess,
    pub prefix: String,
    /// Lease time-to-live in seconds: how long a crashed node stays a member.
    pub lease_ttl: i64,
    pub node: String,
    pub vtep: IpAddr,
    /// Fixed pod subnets (at most one per family); a family without one gets a subnet
    /// allocated from its cluster CIDR in `allocate`.
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster CIDRs (one per family: dual-stack has two) and the length of each node's
    /// slice of each.
    pub allocate: Vec<(IpNet, u8)>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd access")]
    Access(#[from] AccessError),
    #[error("cannot set up the etcd client for {endpoints:?}")]
    Connect {
        endpoints: Vec<String>,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {step} failed")]
    Request {
        step: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {step} timed out after {REQUEST_TIMEOUT:?}")]
    Timeout { step: &'static str },
    #[error("the etcd watch was compacted at revision {revision}")]
    Compacted { revision: i64 },
    #[error("etcd canceled the watch: {reason}")]
    WatchCanceled { reason: String },
    #[error("the etcd watch stream ended")]
    StreamEnded,
    #[error("lease {lease} expired")]
    LeaseExpired { lease: i64 },
    #[error("this node's record {key} was {how} by someone else")]
    RecordLost { key: String, how: &'static str },
    #[error(
        "node name {node} is held by a live flaxd (instance {instance}, pid {pid} on host {host:?}): it answered this flaxd's claim; stop that flaxd first, or give this one another --node-name"
    )]
    NameHeld {
        node: String,
        instance: String,
        pid: u32,
        host: String,
    },
    #[error(
        "another flaxd (instance {instance}, pid {pid} on host {host:?}) runs as node {node} too; this one stops rather than fight over the node's record"
    )]
    NameContested {
        node: String,
        instance: String,
        pid: u32,
        host: String,
    },
    #[error("cannot allocate a pod subnet")]
    Subnet(#[from] SubnetError),
    #[error("other nodes kept taking the subnet this node picked ({ALLOCATION_ATTEMPTS} attempts)")]
    AllocationContended,
    #[error("neither a pod subnet nor a cluster CIDR to allocate one from is configured")]
    NoPodCidr,
    #[error(
        "pod subnet {subnet} overlaps {held}, which etcd records as node {holder}'s ({key}); refusing to share addresses (if {holder} is gone for good, release it with `etcdctl del {key}`)"
    )]
    SubnetTaken {
        subnet: IpNet,
        held: IpNet,
        holder: String,
        key: String,
    },
}

pub(crate) fn nodes_prefix(prefix: &str) -> String {
    format!("{}/nodes/", prefix.trim_end_matches('/'))
}

/// The key of `node`'s member record.
pub fn node_key(prefix: &str, node: &str) -> String {
    format!("{}{node}", nodes_prefix(prefix))
}

/// A client for `endpoints` that notices dead members quickly (HTTP/2 pings) and refuses to
/// serve from a member cut off from the leader. Does not wait for etcd to be up (with user
/// auth it does: etcd-client authenticates while connecting).
/// Plaintext endpoints are refused unless `access` allows them (see [`access`]).
pub async fn connect(endpoints: &[String], access: &EtcdAccess) -> Result<Client, EtcdError> {
    let opts = connect_options(endpoints, access)?
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: endpoints.to_vec(),
            source,
        })
}

async fn timed<T>(
    step: &'static str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| EtcdError::Timeout { step })?
        .map_err(|source| EtcdError::Request { step, source })
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// Every pod subnet allocation under `prefix` (subnet, owning node), and the revision it was
/// read at.
async fn read_allocations(
    client: &mut Client,
    prefix: &str,
) -> Result<(Vec<(IpNet, String)>, i64), EtcdError> {
    let all = subnets_prefix(prefix);
    let resp = timed(
        "read of subnet allocations",
        client.get(all.as_bytes(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let allocations = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let net = parse_subnet_key(prefix, std::str::from_utf8(kv.key()).ok()?)?;
            Some((net, String::from_utf8_lossy(kv.value()).into_owned()))
        })
        .collect();
    Ok((allocations, revision))
}

/// The one compare-and-swap every allocation goes through: records `net` as `node`'s if its
/// key is free and no allocation was added, changed or removed after `revision` (when the
/// caller read them). `false`: someone was faster; read again.
async fn try_claim(
    client: &mut Client,
    prefix: &str,
    node: &str,
    net: &IpNet,
    revision: i64,
) -> Result<bool, EtcdError> {
    let key = subnet_key(prefix, net);
    let txn = Txn::new()
        .when([
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Compare::mod_revision(subnets_prefix(prefix), CompareOp::Less, revision + 1)
                .with_prefix(),
        ])
        .and_then([TxnOp::put(key.as_str(), node, None)]);
    Ok(timed("subnet allocation", client.txn(txn))
        .await?
        .succeeded())
}

/// This node's pod subnet: its existing allocation if it has one, else a free slice (one
/// that overlaps no allocation) claimed by [`try_claim`]. Safe against any number of nodes
/// allocating at once.
pub async fn allocate_subnet(
    client: &mut Client,
    prefix: &str,
    node: &str,
    slices: &Slices,
) -> Result<IpNet, EtcdError> {
    for _ in 0..ALLOCATION_ATTEMPTS {
        let (allocations, revision) = read_allocations(client, prefix).await?;
        if let Some((net, _)) = allocations
            .iter()
            .find(|(net, holder)| holder == node && slices.contains(net))
        {
            tracing::info!(subnet = %net, "reusing this node's pod subnet");
            return Ok(*net);
        }
        let taken: BTreeSet<IpNet> = allocations.into_iter().map(|(net, _)| net).collect();
        let pick = slices.pick(node, &taken)?;
        if try_claim(client, prefix, node, &pick, revision).await? {
            tracing::info!(subnet = %pick, "allocated a pod subnet");
            return Ok(pick);
        }
        tracing::debug!(subnet = %pick, "allocations changed meanwhile; picking again");
    }
    Err(EtcdError::AllocationContended)
}

/// Records a fixed pod subnet as `node`'s, with the same transaction as
/// [`allocate_subnet`]. Already this node's: success. Overlapping another node's allocation:
/// [`EtcdError::SubnetTaken`], and nothing is written.
pub async fn claim_subnet(
    client: &mut Client,
    prefix: &str,
    node: &str,
    net: IpNet,
) -> Result<(), EtcdError> {
    let net = net.trunc();
    for _ in 0..ALLOCATION_ATTEMPTS {
        let (allocations, revision) = read_allocations(client, prefix).await?;
        if allocations.iter().any(|(n, h)| *n == net && h == node) {
            tracing::info!(subnet = %net, "this node's fixed pod subnet is recorded in etcd");
            return Ok(());
        }
        if let Some((held, holder)) = allocations
            .into_iter()
            .find(|(n, h)| h != node && overlaps(n, &net))
        {
            return Err(EtcdError::SubnetTaken {
                subnet: net,
                key: subnet_key(prefix, &held),
                held,
                holder,
            });
        }
        if try_claim(client, prefix, node, &net, revision).await? {
            tracing::info!(subnet = %net, "recorded this node's fixed pod subnet in etcd");
            return Ok(());
        }
        tracing::debug!(subnet = %net, "allocations changed meanwhile; checking again");
    }
    Err(EtcdError::AllocationContended)
}

/// Releases every pod subnet allocation `node` holds (each deleted only if its value is
/// still `node`: a transaction), for a node decommissioned for good, after [`leave`]: its
/// pods are gone, so another node may take the addresses. Returns the subnets released.
pub async fn release_subnets(
    client: &mut Client,
    prefix: &str,
    node: &str,
) -> Result<Vec<IpNet>, EtcdError> {
    let (allocations, _) = read_allocations(client, prefix).await?;
    let mut released = Vec::new();
    for (net, holder) in allocations {
        if holder != node {
            continue;
        }
        let key = subnet_key(prefix, &net);
        let txn = Txn::new()
            .when([Compare::value(key.as_str(), CompareOp::Equal, node)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        if timed("release of a subnet", client.txn(txn))
            .await?
            .succeeded()
        {
            released.push(net);
        }
    }
    Ok(released)
}

/// The etcd source: registers this node, keeps its lease alive, and publishes the members.
pub struct EtcdSource {
    cfg: EtcdConfig,
    metrics: Option<Arc<Metrics>>,
}

impl EtcdSource {
    pub fn new(cfg: EtcdConfig) -> Self {
        EtcdSource { cfg, metrics: None }
    }

    /// Reports a pod subnet conflict in `metrics` (`flaxd_pod_cidr_conflict`, `/healthz`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until `shutdown`, then leaves the node's record and lease in place for the next
    /// flaxd of this node to adopt (see [`register`]).
    /// Only a client that cannot be built at all is an error; everything else is retried.
    pub async fn run(
        self,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> Result<(), EtcdError> {
        let mut client = connect(&self.cfg.endpoints, &self.cfg.access).await?;
        let mut backoff = Backoff::standard();
        // What each family needs: a fixed subnet to claim, or slices to allocate from
        // (checked once: a length that cannot be cut is a configuration error).
        let mut wanted: Vec<Result<IpNet, Slices>> = Vec::new();
        for &(cluster, len) in &self.cfg.allocate {
            match self.cfg.pod_cidrs.iter().find(|c| same_family(c, &cluster)) {
                Some(&fixed) => wanted.push(Ok(fixed)),
                None => wanted.push(Err(Slices::new(cluster, len)?)),
            }
        }
        for &fixed in &self.cfg.pod_cidrs {
            if !self
                .cfg
                .allocate
                .iter()
                .any(|(c, _)| same_family(c, &fixed))
            {
                wanted.push(Ok(fixed));
            }
        }
        if wanted.is_empty() {
            return Err(EtcdError::NoPodCidr);
        }
        let pod_cidrs = loop {
            let mut res = Ok(Vec::new());
            for want in &wanted {
                let one = match want {
                    Ok(c) => claim_subnet(&mut client, &self.cfg.prefix, &self.cfg.node, *c)
                        .await
                        .map(|()| c.trunc()),
                    Err(s) => {
                        allocate_subnet(&mut client, &self.cfg.prefix, &self.cfg.node, s).await
                    }
                };
                match one {
                    Ok(c) => {
                        if let Ok(all) = &mut res {
                            all.push(c);
                        }
                    }
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            let res = res.map(|all| crate::membership::pod_cidrs(&all).unwrap_or(all));
            match res {
                Ok(c) => {
                    self.report_conflict(None);
                    break c;
                }
                Err(e @ EtcdError::SubnetTaken { .. }) => {
                    // Not registered, no tunnels, no conflist: pods must not get addresses
                    // another node hands out. Checked again with backoff, so releasing the
                    // other allocation heals it.
                    let why = linen::error::chain(&e);
                    tracing::error!(error = %why, "pod subnet conflict; not joining");
                    self.report_conflict(Some(why));
                }
                Err(e) => {
                    publisher.set_connected(false);
                    tracing::warn!(error = %linen::error::chain(&e), "cannot get a pod subnet yet; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = backoff.wait() => {}
            }
        };
        let record = MemberRecord::new(self.cfg.vtep, &pod_cidrs);
        let reg = register::Registration {
            node: self.cfg.node.clone(),
            key: node_key(&self.cfg.prefix, &self.cfg.node),
            value: record.to_json(),
            holder_key: holder_key(&self.cfg.prefix, &self.cfg.node),
            holder: register::Holder::this_process(),
            ttl: self.cfg.lease_ttl.max(1),
        };
        let mut lease = None;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            e = register::keep_registered(client.clone(), &reg, &mut lease, self.metrics.as_deref(), Some(&publisher)) => {
                // Another flaxd runs as this node: its lease is not ours to renew.
                tracing::error!(error = %e, "not running as this node");
                return Err(e);
            }
            _ = follow_members(client.clone(), &self.cfg.prefix, &publisher, None, shutdown.clone()) => {}
        }
        // A restart is not a departure: the record stays under its lease, renewed once more
        // so that the next flaxd of this node has a whole TTL to adopt it.
        if let Some(id) = lease {
            register::release_holder(&mut client, &reg).await;
            register::renew_once(&mut client, id).await;
        }
        Ok(())
    }

    fn report_conflict(&self, why: Option<String>) {
        if let Some(m) = &self.metrics {
            m.set_pod_cidr_conflict(why);
        }
    }
}

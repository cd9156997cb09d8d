//! Egress masquerade (flannel's `--ip-masq`): traffic from this node's pod subnet to a
//! destination outside the cluster CIDR leaves with the node's address; pod-to-pod and
//! pod-to-cluster-CIDR traffic keeps the pod's source address.
//!
//! One nftables table per node, `table inet linen`, holding one `nat`/`postrouting` chain
//! with one rule per address family (family-aware: an IPv6 pod subnet gets an `ip6` rule).
//! Ownership is the table's name plus its `comment` ([`OWNER`]): flaxd creates, replaces and
//! deletes only a table that carries it, refuses one that does not, and never lists, edits or
//! flushes any other table (kube-proxy's, iptables-nft's `ip nat`, the portmap plugin's).
//!
//! Why nftables and not iptables: on Debian bookworm (and most current distributions)
//! `iptables` is already the nf_tables backend, so `iptables` rules would be nftables rules
//! in the shared `ip nat` table, where ownership can only be guessed from comments and every
//! change rewrites a chain others also use. A table of our own is replaced atomically in one
//! transaction, is ours by name, and coexists with kube-proxy's and iptables-nft's tables at
//! the same hook (each table's chains are evaluated; the first NAT binding wins, and ours
//! only matches pod-subnet sources leaving the cluster CIDR).
//!
//! Why the `nft` program and not netlink from Rust: the pure-Rust nftables crate
//! (`rustables`) is GPL-3.0, which Linen (Apache-2.0) cannot link, and `nftnl` binds the C
//! libraries libnftnl and libmnl (a C dependency in a daemon that is otherwise static Rust).
//! `nft -f` applies a script as one atomic transaction, and flaxd runs it only at start, on a
//! change of this node's pod subnet and on each resync: never per packet or per pod ADD, and
//! the data path never waits for it. [`Nft`] is the seam where a netlink backend would go.
//!
//! Nothing is removed when flaxd stops: pods keep their egress. `flaxd --uninstall` removes
//! the table (if it is Linen's); `--ip-masq=false` removes a table an earlier run left.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::membership::Snapshot;
use crate::metrics::Metrics;

/// The table's family and name: `inet` so one table can hold both families.
pub const FAMILY: &str = "inet";
pub const TABLE: &str = "linen";
pub const CHAIN: &str = "postrouting";
/// The table's comment: what makes a table named [`TABLE`] Linen's.
pub const OWNER: &str = "owned by flaxd (Linen): egress masquerade, see flaxd --ip-masq";

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("pod subnet {pod} is not inside a cluster CIDR of its family ({cluster:?})")]
    OutsideCluster { pod: IpNet, cluster: Vec<IpNet> },
    #[error(
        "an nftables table `{FAMILY} {TABLE}` exists that Linen did not create (no comment {OWNER:?}); leaving it alone, so there is no egress masquerade: rename or delete it"
    )]
    Foreign,
    #[error("cannot run `nft {args}` (install the nftables package)")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`nft {args}` failed ({status}): {stderr}")]
    Nft {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

pub type Result<T, E = MasqError> = std::result::Result<T, E>;

/// What the table should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// `--ip-masq=false`: no table (one an earlier run left is removed).
    Disabled,
    /// This node's pod subnet is not known yet: touch nothing.
    Unknown,
    /// The `nft -f` script that replaces the table in one transaction.
    Script(String),
}

/// The rules for a node whose pods take addresses from `pods`, in a cluster of `clusters`
/// (one CIDR per family). Pure.
pub fn desired(clusters: &[IpNet], pods: &[IpNet]) -> Result<Desired> {
    let mut rules = Vec::new();
    for pod in pods {
        let pod = pod.trunc();
        let cluster = clusters
            .iter()
            .map(IpNet::trunc)
            .find(|c| same_family(c, &pod) && c.contains(&pod))
            .ok_or_else(|| MasqError::OutsideCluster {
                pod,
                cluster: clusters.to_vec(),
            })?;
        rules.push(rule(pod, cluster));
    }
    if rules.is_empty() {
        return Ok(Desired::Unknown);
    }
    Ok(Desired::Script(script(&rules)))
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// One family's rule: pod subnet to anything outside the cluster CIDR and outside multicast
/// (which is never routed off the node) leaves with the address of the interface it leaves
/// by. `fully-random` port selection, as flannel does, avoids source port clashes between
/// pods behind one address.
fn rule(pod: IpNet, cluster: IpNet) -> String {
    let (proto, family, multicast) = match pod {
        IpNet::V4(_) => ("ip", "ipv4", "224.0.0.0/4"),
        IpNet::V6(_) => ("ip6", "ipv6", "ff00::/8"),
    };
    format!(
        "{proto} saddr {pod} {proto} daddr != {cluster} {proto} daddr != {multicast} masquerade fully-random comment \"linen: {family} egress from {pod} to outside {cluster}\""
    )
}

/// The atomic replace: `add` makes the `delete` safe when the table is absent, and the new
/// table is in place before the transaction commits, so no packet sees it missing.
fn script(rules: &[String]) -> String {
    let mut s = format!(
        "add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\ntable {FAMILY} {TABLE} {{\n\tcomment \"{OWNER}\"\n\tchain {CHAIN} {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
    );
    for r in rules {
        s.push_str("\t\t");
        s.push_str(r);
        s.push('\n');
    }
    s.push_str("\t}\n}\n");
    s
}

/// The table as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Absent,
    /// Named [`TABLE`] but without [`OWNER`]: not Linen's.
    Foreign,
    /// Linen's, with its listing (`nft list table`, the canonical text nft prints).
    Ours(String),
}

impl Observed {
    /// Classifies the listing of the table, `None` when there is none.
    pub fn from_listing(listing: Option<String>) -> Self {
        match listing {
            None => Observed::Absent,
            Some(text) => {
                let owned = text
                    .lines()
                    .map(str::trim)
                    .any(|l| l == format!("comment \"{OWNER}\""));
                if owned {
                    Observed::Ours(text)
                } else {
                    Observed::Foreign
                }
            }
        }
    }
}

/// What this flaxd last applied, and how nft printed the table right after: the next check
/// compares the listing against it, so any edit (a rule deleted, changed or added by hand)
/// is seen, whatever nft version formats the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub script: String,
    pub listing: String,
}

/// One step of the masquerade reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Apply the script. `repair`: what this flaxd applied was changed or removed by hand.
    Apply {
        repair: bool,
    },
    Delete,
    Refuse,
}

/// Pure: what to do, given what is wanted, what is there and what this flaxd last applied.
pub fn plan(desired: &Desired, observed: &Observed, last: Option<&Applied>) -> Action {
    match (desired, observed) {
        (Desired::Disabled, Observed::Ours(_)) => Action::Delete,
        (Desired::Disabled | Desired::Unknown, _) => Action::Nothing,
        (Desired::Script(_), Observed::Foreign) => Action::Refuse,
        (Desired::Script(_), Observed::Absent) => Action::Apply {
            repair: last.is_some(),
        },
        (Desired::Script(want), Observed::Ours(listing)) => match last {
            Some(a) if a.script == *want && a.listing == *listing => Action::Nothing,
            Some(a) if a.script == *want => Action::Apply { repair: true },
            // A new pod subnet, or a table an earlier flaxd made: replace it once.
            _ => Action::Apply { repair: false },
        },
    }
}

/// The nftables operations flaxd needs, sized to it.
pub trait Nft {
    /// The listing of `table inet linen`, `None` when there is no such table. Read-only.
    fn list(&self) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Runs an `nft -f` script as one transaction: all of it or nothing.
    fn apply(&self, script: &str) -> impl Future<Output = Result<()>> + Send;
}

/// The `nft` program (see the module doc for why a program).
#[derive(Debug, Clone)]
pub struct NftProgram {
    pub program: String,
}

impl Default for NftProgram {
    fn default() -> Self {
        NftProgram {
            program: "nft".to_owned(),
        }
    }
}

impl NftProgram {
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        use tokio::io::AsyncWriteExt as _;
        let shown = args.join(" ");
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let spawn_err = |source| MasqError::Spawn {
            args: shown.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.map_err(spawn_err)?;
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if !out.status.success() {
            return Err(MasqError::Nft {
                args: shown,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Nft for NftProgram {
    async fn list(&self) -> Result<Option<String>> {
        // The table names first: "no such table" is then an answer, not an error string.
        let tables = self.run(&["list", "tables", FAMILY], None).await?;
        let want = format!("table {FAMILY} {TABLE}");
        if !tables.lines().any(|l| l.trim() == want) {
            return Ok(None);
        }
        self.run(&["list", "table", FAMILY, TABLE], None)
            .await
            .map(Some)
    }

    async fn apply(&self, script: &str) -> Result<()> {
        self.run(&["-f", "-"], Some(script)).await.map(drop)
    }
}

/// Keeps the table in step: [`Masquerade::once`] at start, on every change of this node's
/// pod subnet and every resync.
pub struct Masquerade<N> {
    nft: N,
    enabled: bool,
    clusters: Vec<IpNet>,
    /// Configured pod subnets (one per family); else those the node's membership record
    /// carries.
    pod_cidrs: Vec<IpNet>,
    node: String,
    metrics: Arc<Metrics>,
    last: Option<Applied>,
}

impl<N: Nft> Masquerade<N> {
    pub fn new(
        nft: N,
        enabled: bool,
        clusters: Vec<IpNet>,
        pod_cidrs: Vec<IpNet>,
        node: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.ip_masq_enabled.store(enabled, Ordering::Relaxed);
        Masquerade {
            nft,
            enabled,
            clusters,
            pod_cidrs,
            node,
            metrics,
            last: None,
        }
    }

    fn pods(&self, snap: &Snapshot) -> Vec<IpNet> {
        if !self.pod_cidrs.is_empty() {
            return self.pod_cidrs.clone();
        }
        snap.members
            .get(&self.node)
            .map(|m| m.pod_cidrs.clone())
            .unwrap_or_default()
    }

    /// One check, and the change it calls for. Returns the action taken.
    pub async fn once(&mut self, snap: &Snapshot) -> Result<Action> {
        let want = if self.enabled {
            desired(&self.clusters, &self.pods(snap))?
        } else {
            Desired::Disabled
        };
        let listing = match self.nft.list().await {
            // Disabled and no nftables on this host: there is nothing to remove either.
            Err(MasqError::Spawn { source, .. })
                if !self.enabled && source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            other => other?,
        };
        let observed = Observed::from_listing(listing);
        let action = plan(&want, &observed, self.last.as_ref());
        let m = &self.metrics;
        match (&action, &want) {
            (Action::Nothing, Desired::Script(_)) => {
                m.ip_masq_rules_ok.store(true, Ordering::Relaxed)
            }
            (Action::Nothing | Action::Delete, _) => {
                m.ip_masq_rules_ok.store(false, Ordering::Relaxed)
            }
            (Action::Refuse, _) => {
                m.ip_masq_rules_ok.store(false, Ordering::Relaxed);
                return Err(MasqError::Foreign);
            }
            (Action::Apply { repair }, Desired::Script(script)) => {
                if *repair {
                    m.ip_masq_repairs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "egress masquerade rules were changed or removed by hand; repairing"
                    );
                }
                self.nft.apply(script).await?;
                // How nft prints what was just applied: the reference for the next check.
                let listing = self.nft.list().await?.unwrap_or_default();
                self.last = Some(Applied {
                    script: script.clone(),
                    listing,
                });
                m.ip_masq_rules_ok.store(true, Ordering::Relaxed);
                tracing::info!(table = TABLE, "egress masquerade rules in place");
            }
            (Action::Apply { .. }, _) => unreachable!("plan applies only a script"),
        }
        if action == Action::Delete {
            self.nft
                .apply(&format!("delete table {FAMILY} {TABLE}\n"))
                .await?;
            self.last = None;
            tracing::info!(
                table = TABLE,
                "--ip-masq=false: removed Linen's masquerade table"
            );
        }
        Ok(action)
    }

    /// Runs until `shutdown`: a check at start, on a change of this node's pod subnet and
    /// every `resync`; a failed check is retried with backoff (bounded by `resync`).
    pub async fn run(
        mut self,
        mut members: watch::Receiver<Snapshot>,
        resync: Duration,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), resync);
        let mut source_open = true;
        let mut pods = Vec::new();
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
                r = members.changed(), if source_open => {
                    if r.is_err() {
                        source_open = false;
                    }
                    // Only this node's pod subnet matters here: not every membership change.
                    if self.pods(&members.borrow()) == pods {
                        continue;
                    }
                }
            }
            let snap = members.borrow_and_update().clone();
            pods = self.pods(&snap);
            let res = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.once(&snap) => r,
            };
            match res {
                Ok(_) => {
                    backoff.reset();
                    self.metrics.set_ip_masq_error(None);
                    next = Instant::now() + resync;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    let why = linen::error::chain(&e);
                    tracing::error!(error = %why, retry_in = ?delay, "egress masquerade");
                    self.metrics.set_ip_masq_error(Some(why));
                    next = Instant::now() + delay;
                }
            }
        }
    }
}

/// `flaxd --uninstall`: removes Linen's table if there is one and it is Linen's; a foreign
/// table of that name is an error and stays. Returns whether a table was removed.
pub async fn uninstall(nft: &impl Nft) -> Result<bool> {
    match Observed::from_listing(nft.list().await?) {
        Observed::Absent => Ok(false),
        Observed::Foreign => Err(MasqError::Foreign),
        Observed::Ours(_) => nft
            .apply(&format!("delete table {FAMILY} {TABLE}\n"))
            .await
            .map(|()| true),
    }
}

#[cfg(test)]
mod tests;

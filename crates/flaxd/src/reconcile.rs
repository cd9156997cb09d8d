//! The reconciler, one for every source: level-triggered on every membership change, every
//! change of the OVS rows and a periodic resync; bursts are debounced into one pass; failed
//! passes are retried with [`Backoff`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::IpNet;
use linen::model::{BridgeSpec, PlanError, Source, TunnelSpec};
use linen::ovs::OvsError;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::conflist::{self, ConflistError, ConflistSpec};
use crate::desired::{NodeIdentity, TunnelPolicy, desired};
use crate::membership::Snapshot;
use crate::metrics::Metrics;
use crate::overlay::Overlay;

/// What the reconciler applies, besides the membership.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub me: NodeIdentity,
    pub policy: TunnelPolicy,
    pub bridge: BridgeSpec,
    /// Where to write this node's conflist, and what goes in it.
    pub conflist: Option<(PathBuf, ConflistSpec)>,
    /// This node's pod subnets when configured (one per family); otherwise those its
    /// membership record carries (etcd allocation, the Node's `spec.podCIDRs`, the file).
    pub pod_cidrs: Vec<IpNet>,
    /// Quiet time that ends a burst of triggers (at most ten times this is waited).
    pub debounce: Duration,
    /// A pass at least this often, even when nothing was seen to change.
    pub resync: Duration,
    /// The first and the largest delay before retrying a failed pass.
    pub retry: (Duration, Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot apply the tunnels")]
    Overlay(#[from] OvsError),
    #[error(
        "tunnels to {remotes:?} left out: ports Linen did not create hold their names (first: {first})"
    )]
    Conflicts {
        remotes: Vec<IpAddr>,
        first: PlanError,
    },
    #[error("cannot write the CNI configuration")]
    Conflist(#[from] ConflistError),
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The source has not read the whole membership yet: nothing was touched.
    NotSynced,
    Applied {
        tunnels: usize,
        /// Operations written to OVSDB (0 when in step).
        changes: usize,
        conflist_written: bool,
    },
}

pub struct Reconciler<O> {
    cfg: ReconcilerConfig,
    overlay: O,
    metrics: Arc<Metrics>,
}

impl<O: Overlay> Reconciler<O> {
    pub fn new(cfg: ReconcilerConfig, overlay: O, metrics: Arc<Metrics>) -> Self {
        Reconciler {
            cfg,
            overlay,
            metrics,
        }
    }

    /// One pass over `snap`: the tunnels of [`desired`] applied in one `ensure` (tunnels of
    /// departed members pruned, others' rows untouched), then the conflist. A tunnel whose
    /// name a foreign port holds is left out so the others still apply; the pass then
    /// reports [`ReconcileError::Conflicts`].
    pub async fn reconcile_once(&self, snap: &Snapshot) -> Result<Outcome, ReconcileError> {
        let m = &self.metrics;
        m.members
            .store(snap.members.len() as u64, Ordering::Relaxed);
        m.source_synced.store(snap.synced, Ordering::Relaxed);
        m.source_connected.store(snap.connected, Ordering::Relaxed);
        if !snap.synced {
            // A partial membership would prune live tunnels.
            return Ok(Outcome::NotSynced);
        }
        let mut tunnels = desired(&snap.members, &self.cfg.me, &self.cfg.policy);
        let mut conflicts: Vec<(IpAddr, PlanError)> = Vec::new();
        let ensured = loop {
            match self
                .overlay
                .ensure(&self.cfg.bridge, &tunnels, Some(Source::Flaxd))
                .await
            {
                Err(OvsError::Conflict(e @ PlanError::NameTaken { remote, .. }))
                    if tunnels.iter().any(|t| t.remote == remote) =>
                {
                    tracing::error!(error = %e, "leaving this tunnel out; nothing that Linen did not create is touched");
                    tunnels.retain(|t: &TunnelSpec| t.remote != remote);
                    conflicts.push((remote, e));
                }
                other => break other?,
            }
        };
        m.tunnels.store(tunnels.len() as u64, Ordering::Relaxed);
        m.conflicts.store(conflicts.len() as u64, Ordering::Relaxed);
        if !ensured.applied.is_empty() {
            tracing::info!(
                changes = ensured.applied.len(),
                tunnels = tunnels.len(),
                "overlay updated"
            );
        }
        let conflist_written = self.write_conflist(snap)?;
        if let Some((_, first)) = conflicts.first() {
            return Err(ReconcileError::Conflicts {
                remotes: conflicts.iter().map(|(r, _)| *r).collect(),
                first: first.clone(),
            });
        }
        Ok(Outcome::Applied {
            tunnels: tunnels.len(),
            changes: ensured.applied.len(),
            conflist_written,
        })
    }

    fn write_conflist(&self, snap: &Snapshot) -> Result<bool, ConflistError> {
        let Some((path, spec)) = &self.cfg.conflist else {
            return Ok(false);
        };
        let pod_cidrs = if self.cfg.pod_cidrs.is_empty() {
            snap.members
                .get(&self.cfg.me.name)
                .map(|m| m.pod_cidrs.clone())
                .unwrap_or_default()
        } else {
            self.cfg.pod_cidrs.clone()
        };
        if pod_cidrs.is_empty() {
            tracing::debug!("no pod subnet known for this node yet; conflist not written");
            return Ok(false);
        }
        let text = conflist::render(spec, &pod_cidrs)?;
        let written = conflist::write_if_changed(path, &text)?;
        if written {
            self.metrics.conflist_writes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(path = %path.display(), ?pod_cidrs, "CNI configuration written");
        }
        Ok(written)
    }

    /// Runs until `shutdown`: a pass after every trigger (membership change, `ovs_changed`
    /// notification, resync tick), debounced; a failed pass is retried with backoff.
    pub async fn run(
        self,
        mut members: watch::Receiver<Snapshot>,
        ovs_changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(self.cfg.retry.0, self.cfg.retry.1);
        let mut retry_at: Option<Instant> = None;
        let mut source_open = true;
        let mut next_resync = Instant::now() + self.cfg.resync;
        // The first pass needs no trigger: the snapshot may already be synced.
        let mut triggered = true;
        loop {
            if !triggered {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = members.changed(), if source_open => if r.is_err() {
                        tracing::warn!("membership source stopped; keeping the last membership");
                        source_open = false;
                    },
                    _ = ovs_changed.notified() => {}
                    _ = tokio::time::sleep_until(next_resync) => {}
                    _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
                }
            }
            triggered = false;
            // Debounce: wait for a quiet moment so a burst becomes one pass.
            let limit = Instant::now() + self.cfg.debounce * 10;
            loop {
                let quiet = (Instant::now() + self.cfg.debounce).min(limit);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = members.changed(), if source_open => if r.is_err() { source_open = false },
                    _ = ovs_changed.notified() => {}
                    _ = tokio::time::sleep_until(quiet) => break,
                }
                if Instant::now() >= limit {
                    break;
                }
            }
            let snap = members.borrow_and_update().clone();
            let started = std::time::Instant::now();
            let res = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.reconcile_once(&snap) => r,
            };
            next_resync = Instant::now() + self.cfg.resync;
            release_freed_memory();
            match res {
                Ok(outcome) => {
                    tracing::debug!(?outcome, "reconciled");
                    backoff.reset();
                    retry_at = None;
                    let error = None;
                    if outcome != Outcome::NotSynced {
                        self.metrics.record_reconcile(started.elapsed(), error);
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(error = %linen::error::chain(&e), retry_in = ?delay, "reconcile failed");
                    self.metrics
                        .record_reconcile(started.elapsed(), Some(linen::error::chain(&e)));
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }
}

/// A pass over a large membership reads every tunnel row and builds one large transaction;
/// glibc keeps the freed memory in its heap afterwards. Hand it back to the system so the
/// daemon's resident size follows what it holds, not its largest pass.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live
    // allocation and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests;

//! This node's member record: registered under a lease and kept so, adopted across
//! restarts, re-asserted when it goes missing or is overwritten, and removed only by an
//! explicit [`leave`].
//!
//! A restart is not a departure. flaxd exits without revoking its lease; the record stays
//! while the lease lives (the TTL), and the next flaxd of the node adopts it: it reads the
//! record, finds the lease it is under still alive (`LeaseTimeToLive`) and keeps that lease
//! alive, writing nothing when the record already says what it would write. Peers see no
//! event at all. A flaxd that does not come back within the TTL (a crashed or powered-off
//! node) loses its record when the lease expires, and peers drop it then.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, PutOptions, WatchOptions};

use super::{EtcdError, node_key, timed};
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// The bound on the last renewal on shutdown.
const LAST_RENEWAL: Duration = Duration::from_secs(2);

/// What this node registers, and for how long a silent node stays registered.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub key: String,
    pub value: String,
    /// Seconds.
    pub ttl: i64,
}

impl Registration {
    fn period(&self) -> Duration {
        Duration::from_millis((self.ttl.max(1) as u64 * 1000 / 3).max(100))
    }
}

/// Keeps the record present, ours and under a live lease, forever. `lease` holds the lease
/// in use, so that the caller can renew it one last time on shutdown.
/// A record found deleted or overwritten makes the node "not a member" in `metrics`
/// (`/healthz` 503) until it is back.
pub(crate) async fn keep_registered(
    mut client: Client,
    reg: &Registration,
    lease: &mut Option<i64>,
    metrics: Option<&Metrics>,
) -> Infallible {
    let period = reg.period();
    let mut backoff = Backoff::new(Duration::from_millis(100), period);
    loop {
        let Err(e) = register_and_renew(&mut client, reg, lease, &mut backoff, metrics).await;
        if let (EtcdError::RecordLost { .. }, Some(m)) = (&e, metrics) {
            m.set_not_member(Some(e.to_string()));
        }
        tracing::warn!(error = %crate::reconcile::error_chain(&e), "etcd registration interrupted; registering again");
        backoff.wait().await;
    }
}

/// One registration: picks the lease (the one held, else the record's if it is alive,
/// else a new one), writes the record unless it is already this node's under that lease,
/// then renews the lease every TTL/3 and watches the record until something goes wrong.
async fn register_and_renew(
    client: &mut Client,
    reg: &Registration,
    lease: &mut Option<i64>,
    backoff: &mut Backoff,
    metrics: Option<&Metrics>,
) -> Result<Infallible, EtcdError> {
    let key = reg.key.as_str();
    let current = timed("read of this node's record", client.get(key, None)).await?;
    let mut revision = current.header().map_or(0, |h| h.revision());
    let existing = current.kvs().first();
    let candidate = lease.or_else(|| existing.map(|kv| kv.lease()).filter(|l| *l != 0));
    let adopted = match candidate {
        Some(id) if lease_alive(client, id, reg.ttl).await? => id,
        _ => {
            let granted = timed("lease grant", client.lease_grant(reg.ttl, None)).await?;
            granted.id()
        }
    };
    *lease = Some(adopted);
    let ours =
        existing.is_some_and(|kv| kv.value() == reg.value.as_bytes() && kv.lease() == adopted);
    if ours {
        tracing::info!(
            key,
            lease = adopted,
            "this node's record is in place; kept as is"
        );
    } else {
        let put = client.put(
            key,
            reg.value.as_str(),
            Some(PutOptions::new().with_lease(adopted)),
        );
        let resp = timed("registration", put).await?;
        revision = resp.header().map_or(revision, |h| h.revision());
        tracing::info!(key, lease = adopted, ttl = reg.ttl, "registered in etcd");
    }
    if let Some(m) = metrics {
        m.set_not_member(None);
    }
    let registered = Instant::now();
    let (mut keeper, mut renewals) =
        timed("lease keep-alive", client.lease_keep_alive(adopted)).await?;
    let opts = WatchOptions::new().with_start_revision(revision + 1);
    let mut changes = timed("watch of this node's record", client.watch(key, Some(opts))).await?;
    let mut tick = tokio::time::interval(reg.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                timed("lease keep-alive", keeper.keep_alive()).await?;
                match timed("lease keep-alive", renewals.message()).await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(EtcdError::LeaseExpired { lease: adopted }),
                }
                // Only a registration that stood for a whole period resets the backoff:
                // two writers fighting over one record slow down instead of spinning.
                if registered.elapsed() >= reg.period() {
                    backoff.reset();
                }
            }
            msg = changes.message() => {
                let resp = msg
                    .map_err(|source| EtcdError::Request { step: "watch of this node's record", source })?
                    .ok_or(EtcdError::StreamEnded)?;
                if resp.canceled() {
                    return Err(EtcdError::WatchCanceled { reason: resp.cancel_reason().to_owned() });
                }
                for ev in resp.events() {
                    let lost = match (ev.event_type(), ev.kv()) {
                        (EventType::Delete, _) => Some("deleted"),
                        (EventType::Put, Some(kv)) if kv.value() != reg.value.as_bytes() => Some("overwritten"),
                        (EventType::Put, Some(kv)) if kv.lease() != adopted => Some("moved to another lease"),
                        _ => None,
                    };
                    if let Some(how) = lost {
                        return Err(EtcdError::RecordLost { key: reg.key.clone(), how });
                    }
                }
            }
        }
    }
}

/// Whether lease `id` exists with `ttl` (a lease granted for another TTL, e.g. before
/// `--etcd-lease-ttl` changed, is not adopted: a new one is granted and the old expires).
async fn lease_alive(client: &mut Client, id: i64, ttl: i64) -> Result<bool, EtcdError> {
    let r = timed("lease lookup", client.lease_time_to_live(id, None)).await?;
    Ok(r.ttl() > 0 && r.granted_ttl() == ttl)
}

/// Renews `lease` once, so that a successor has a whole TTL to adopt the record. Best
/// effort, and bounded by [`LAST_RENEWAL`]: shutting down never waits for etcd long.
pub(crate) async fn renew_once(client: &mut Client, lease: i64) {
    let renewed = async {
        let (mut keeper, mut renewals) =
            timed("lease keep-alive", client.lease_keep_alive(lease)).await?;
        timed("lease keep-alive", keeper.keep_alive()).await?;
        timed("lease keep-alive", renewals.message()).await
    };
    match tokio::time::timeout(LAST_RENEWAL, renewed).await {
        Ok(Ok(Some(r))) if r.ttl() > 0 => tracing::info!(
            lease,
            ttl = r.ttl(),
            "lease renewed; this node stays a member until it expires or a new flaxd adopts it"
        ),
        Ok(Ok(_)) => tracing::warn!(lease, "the lease had already expired"),
        Ok(Err(e)) => {
            tracing::warn!(lease, error = %crate::reconcile::error_chain(&e), "cannot renew the lease on the way out")
        }
        Err(_) => tracing::warn!(
            lease,
            "etcd did not renew the lease within {LAST_RENEWAL:?} on the way out"
        ),
    }
}

/// What [`leave`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// The node had a member record.
    pub was_member: bool,
    /// The lease it was under, now revoked.
    pub revoked: Option<i64>,
}

/// The explicit departure of `node`: revokes the lease its record is under (every peer
/// drops it at once) and deletes the record (also one under no lease). Idempotent. The
/// node's pod subnet allocation is kept (see the module doc of [`super`]).
///
/// Run it only once the node's flaxd is stopped: a running flaxd re-registers its node.
pub async fn leave(client: &mut Client, prefix: &str, node: &str) -> Result<Left, EtcdError> {
    let key = node_key(prefix, node);
    let current = timed("read of the node's record", client.get(key.as_str(), None)).await?;
    let Some(kv) = current.kvs().first() else {
        return Ok(Left {
            was_member: false,
            revoked: None,
        });
    };
    let lease = Some(kv.lease()).filter(|l| *l != 0);
    let mut revoked = None;
    if let Some(id) = lease {
        match timed("lease revoke", client.lease_revoke(id)).await {
            Ok(_) => revoked = Some(id),
            // Expired or revoked meanwhile: the record is going or gone anyway.
            Err(e) => {
                let r = timed("lease lookup", client.lease_time_to_live(id, None)).await?;
                if r.ttl() > 0 {
                    return Err(e);
                }
            }
        }
    }
    timed(
        "delete of the node's record",
        client.delete(key.as_str(), None),
    )
    .await?;
    Ok(Left {
        was_member: true,
        revoked,
    })
}

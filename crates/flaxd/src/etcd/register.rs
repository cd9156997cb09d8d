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
//!
//! **One live flaxd per node name.** Adoption must not let a second flaxd (a copy started
//! by mistake, two hosts given the same `--node-name`) share the name with a running one.
//! Next to the record, under the same lease, each flaxd keeps `<prefix>/holders/<node>` =
//! `{"instance": random id of this process, "pid", "host"}` (peers do not watch it, so it
//! costs them nothing). A starting flaxd that finds another instance there does not know
//! whether that one is alive (a crash or a restart leaves the key until the TTL), so it asks:
//! it writes a *claim* (`"claim": true`) and waits [`ANSWER_WINDOW`]. A live holder watches
//! its key and answers a claim at once by writing itself back; the starter then refuses to
//! run ([`EtcdError::NameHeld`], naming the holder's pid and host). No answer: the holder is
//! gone (crashed, stopped, restarted), and the starter adopts record and lease as above.
//! A running flaxd that finds another *running* one in the key (not a claim: both ran, e.g.
//! one was cut off from etcd longer than the window) stops with
//! [`EtcdError::NameContested`] rather than fight over the record.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};

use super::{EtcdError, node_key, timed};
use crate::backoff::Backoff;
use crate::membership::Publisher;
use crate::metrics::Metrics;

/// The bound on the last renewal on shutdown.
const LAST_RENEWAL: Duration = Duration::from_secs(2);
/// How long a starting flaxd waits for a live holder of its node name to answer its claim.
/// A live holder answers within milliseconds (it watches the key); the margin covers a
/// holder busy with a large reconcile or a slow etcd.
pub const ANSWER_WINDOW: Duration = Duration::from_secs(3);

/// Who runs as a node: one flaxd process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Holder {
    /// Random, per process: tells two processes apart even with the same pid on two hosts.
    pub instance: String,
    pub pid: u32,
    pub host: String,
    /// A starting flaxd asking whether the holder is alive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claim: bool,
}

impl Holder {
    pub fn this_process() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Holder {
            instance: format!("{:016x}", rand::random::<u64>()),
            pid: std::process::id(),
            host,
            claim: false,
        }
    }

    fn parse(bytes: &[u8]) -> Option<Holder> {
        serde_json::from_slice(bytes).ok()
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a holder serializes")
    }
}

/// The key naming the flaxd that runs as `node`.
pub fn holder_key(prefix: &str, node: &str) -> String {
    format!("{}/holders/{node}", prefix.trim_end_matches('/'))
}

/// What this node registers, and for how long a silent node stays registered.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub node: String,
    pub key: String,
    pub value: String,
    pub holder_key: String,
    pub holder: Holder,
    /// Seconds.
    pub ttl: i64,
}

impl Registration {
    fn held(&self, h: &Holder) -> EtcdError {
        EtcdError::NameHeld {
            node: self.node.clone(),
            instance: h.instance.clone(),
            pid: h.pid,
            host: h.host.clone(),
        }
    }

    fn contested(&self, h: &Holder) -> EtcdError {
        EtcdError::NameContested {
            node: self.node.clone(),
            instance: h.instance.clone(),
            pid: h.pid,
            host: h.host.clone(),
        }
    }
}

impl Registration {
    fn period(&self) -> Duration {
        Duration::from_millis((self.ttl.max(1) as u64 * 1000 / 3).max(100))
    }
}

/// Keeps the record present, ours and under a live lease, until another flaxd turns out to
/// hold the node name (the only error returned). `lease` holds the lease in use, so that
/// the caller can renew it one last time on shutdown.
/// A record found deleted or overwritten makes the node "not a member" in `metrics`
/// (`/healthz` 503) until it is back.
///
/// The lease keep-alive is also flaxd's heartbeat with etcd: the membership watch says
/// nothing while etcd is frozen (a stopped process, a partition that drops packets), but a
/// renewal then times out. Any failure marks the source disconnected on `publisher`
/// (`flaxd_source_connected 0`), and a registration that stands again marks it connected.
pub(crate) async fn keep_registered(
    mut client: Client,
    reg: &Registration,
    lease: &mut Option<i64>,
    metrics: Option<&Metrics>,
    publisher: Option<&Publisher>,
) -> EtcdError {
    let period = reg.period();
    let mut backoff = Backoff::new(Duration::from_millis(100), period);
    let mut starting = true;
    loop {
        let Err(e) = register_and_renew(
            &mut client,
            reg,
            lease,
            &mut backoff,
            metrics,
            publisher,
            &mut starting,
        )
        .await;
        // etcd answered these; anything else (a timeout, a broken stream) is a lost link.
        let answered = matches!(
            e,
            EtcdError::RecordLost { .. }
                | EtcdError::NameHeld { .. }
                | EtcdError::NameContested { .. }
        );
        if let (false, Some(p)) = (answered, publisher) {
            p.set_connected(false);
        }
        if matches!(
            e,
            EtcdError::NameHeld { .. } | EtcdError::NameContested { .. }
        ) {
            return e;
        }
        if let (EtcdError::RecordLost { .. }, Some(m)) = (&e, metrics) {
            m.set_not_member(Some(e.to_string()));
        }
        tracing::warn!(error = %linen::error::chain(&e), "etcd registration interrupted; registering again");
        // Registering again takes several requests in a row, and with one etcd member
        // down a share of them fail (the client's balancer still routes some to it): the
        // held lease is renewed on its own first, so it never expires while the chain is
        // retried (seen: a node dropped by its peers 3 s after one of three members stopped).
        if let Some(id) = *lease {
            hold_lease(&mut client, id).await;
        }
        backoff.wait().await;
    }
}

/// Renews `lease` once, trying a few times (each try may reach another etcd member).
/// Best effort: the registration loop goes on either way.
async fn hold_lease(client: &mut Client, lease: i64) {
    const TRIES: usize = 5;
    for attempt in 1..=TRIES {
        match renew(client, lease).await {
            // Renewed, or expired (nothing to hold: registering again grants a new one).
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(lease, attempt, error = %linen::error::chain(&e), "cannot renew the lease yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
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
    publisher: Option<&Publisher>,
    starting: &mut bool,
) -> Result<Infallible, EtcdError> {
    let key = reg.key.as_str();
    let hkey = reg.holder_key.as_str();
    let holder = timed("read of this node's holder", client.get(hkey, None)).await?;
    let other = holder
        .kvs()
        .first()
        .filter(|kv| kv.lease() != 0)
        .and_then(|kv| Some((Holder::parse(kv.value())?, kv.lease())))
        .filter(|(h, _)| h.instance != reg.holder.instance && !h.claim);
    if let Some((h, hlease)) = other {
        if !*starting {
            return Err(reg.contested(&h));
        }
        challenge(client, reg, hlease, &h).await?;
    }
    *starting = false;
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
    revision = revision.max(put_holder(client, reg, adopted).await?);
    if let Some(m) = metrics {
        m.set_not_member(None);
    }
    if let Some(p) = publisher {
        p.set_connected(true);
    }
    let registered = Instant::now();
    let (mut keeper, mut renewals) =
        timed("lease keep-alive", client.lease_keep_alive(adopted)).await?;
    let opts = WatchOptions::new().with_start_revision(revision + 1);
    let mut changes = timed(
        "watch of this node's record",
        client.watch(key, Some(opts.clone())),
    )
    .await?;
    let mut holders = timed(
        "watch of this node's holder",
        client.watch(hkey, Some(opts)),
    )
    .await?;
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
            msg = holders.message() => {
                let resp = msg
                    .map_err(|source| EtcdError::Request { step: "watch of this node's holder", source })?
                    .ok_or(EtcdError::StreamEnded)?;
                if resp.canceled() {
                    return Err(EtcdError::WatchCanceled { reason: resp.cancel_reason().to_owned() });
                }
                for ev in resp.events() {
                    let found = ev.kv().and_then(|kv| Holder::parse(kv.value()));
                    match (ev.event_type(), found) {
                        (EventType::Put, Some(h)) if h.instance == reg.holder.instance => {}
                        (EventType::Put, Some(h)) if h.claim => {
                            tracing::warn!(
                                node = reg.node, instance = h.instance, pid = h.pid, host = h.host,
                                "another flaxd tried to start as this node; answering that this one runs (it will refuse to start)"
                            );
                            put_holder(client, reg, adopted).await?;
                        }
                        (EventType::Put, Some(h)) => return Err(reg.contested(&h)),
                        // Deleted or garbage: put back.
                        _ => {
                            tracing::warn!(key = hkey, "this node's holder key was deleted or overwritten; putting it back");
                            put_holder(client, reg, adopted).await?;
                        }
                    }
                }
            }
        }
    }
}

/// Writes this process as the node's holder under `lease`; returns the revision.
async fn put_holder(client: &mut Client, reg: &Registration, lease: i64) -> Result<i64, EtcdError> {
    let put = client.put(
        reg.holder_key.as_str(),
        reg.holder.to_json(),
        Some(PutOptions::new().with_lease(lease)),
    );
    let resp = timed("write of this node's holder", put).await?;
    Ok(resp.header().map_or(0, |h| h.revision()))
}

/// Asks `held`, the flaxd named in the holder key, whether it is alive: writes a claim
/// under the key's lease and waits [`ANSWER_WINDOW`] for it to write itself back.
/// Answered: [`EtcdError::NameHeld`]. Not answered (or the key expired meanwhile): `Ok`, the
/// name is free to adopt.
async fn challenge(
    client: &mut Client,
    reg: &Registration,
    lease: i64,
    held: &Holder,
) -> Result<(), EtcdError> {
    let claim = Holder {
        claim: true,
        ..reg.holder.clone()
    };
    tracing::info!(
        node = reg.node,
        instance = held.instance,
        pid = held.pid,
        host = held.host,
        "another flaxd was last seen running as this node; asking whether it still does"
    );
    let put = client.put(
        reg.holder_key.as_str(),
        claim.to_json(),
        Some(PutOptions::new().with_lease(lease)),
    );
    let revision = match timed("claim of the node name", put).await {
        Ok(r) => r.header().map_or(0, |h| h.revision()),
        // The lease expired between the read and the claim: nobody holds the name.
        Err(EtcdError::Request { .. }) if !lease_alive_any(client, lease).await? => return Ok(()),
        Err(e) => return Err(e),
    };
    let opts = WatchOptions::new().with_start_revision(revision + 1);
    let mut answers = timed(
        "watch of this node's holder",
        client.watch(reg.holder_key.as_str(), Some(opts)),
    )
    .await?;
    let window = tokio::time::sleep(ANSWER_WINDOW);
    tokio::pin!(window);
    loop {
        tokio::select! {
            _ = &mut window => {
                tracing::info!(node = reg.node, instance = held.instance, "no answer within {ANSWER_WINDOW:?}: that flaxd is gone; taking over");
                return Ok(());
            }
            msg = answers.message() => {
                let resp = msg
                    .map_err(|source| EtcdError::Request { step: "watch of this node's holder", source })?
                    .ok_or(EtcdError::StreamEnded)?;
                for ev in resp.events() {
                    let found = ev.kv().and_then(|kv| Holder::parse(kv.value()));
                    match (ev.event_type(), found) {
                        (EventType::Put, Some(h)) if h.instance != reg.holder.instance && !h.claim => {
                            return Err(reg.held(&h));
                        }
                        (EventType::Delete, _) => return Ok(()),
                        _ => {}
                    }
                }
            }
        }
    }
}

async fn lease_alive_any(client: &mut Client, id: i64) -> Result<bool, EtcdError> {
    let r = timed("lease lookup", client.lease_time_to_live(id, None)).await?;
    Ok(r.ttl() > 0)
}

/// Whether lease `id` exists with `ttl` (a lease granted for another TTL, e.g. before
/// `--etcd-lease-ttl` changed, is not adopted: a new one is granted and the old expires).
async fn lease_alive(client: &mut Client, id: i64, ttl: i64) -> Result<bool, EtcdError> {
    let r = timed("lease lookup", client.lease_time_to_live(id, None)).await?;
    Ok(r.ttl() > 0 && r.granted_ttl() == ttl)
}

/// On a clean exit: removes this process from the holder key (only if it is still there),
/// so that the next flaxd of the node adopts at once instead of waiting [`ANSWER_WINDOW`]
/// for an answer. Best effort, bounded by [`LAST_RENEWAL`].
pub(crate) async fn release_holder(client: &mut Client, reg: &Registration) {
    let key = reg.holder_key.as_str();
    let txn = Txn::new()
        .when([Compare::value(key, CompareOp::Equal, reg.holder.to_json())])
        .and_then([TxnOp::delete(key, None)]);
    match tokio::time::timeout(LAST_RENEWAL, client.txn(txn)).await {
        Ok(Ok(_)) => tracing::debug!(key, "released the node name"),
        Ok(Err(e)) => {
            tracing::warn!(key, error = %e, "cannot release the node name on the way out")
        }
        Err(_) => tracing::warn!(
            key,
            "etcd did not answer the release of the node name in time"
        ),
    }
}

/// One keep-alive round trip for `lease`: etcd's answer (a TTL of 0 means it expired).
async fn renew(
    client: &mut Client,
    lease: i64,
) -> Result<Option<etcd_client::LeaseKeepAliveResponse>, EtcdError> {
    let (mut keeper, mut renewals) =
        timed("lease keep-alive", client.lease_keep_alive(lease)).await?;
    timed("lease keep-alive", keeper.keep_alive()).await?;
    timed("lease keep-alive", renewals.message()).await
}

/// Renews `lease` once, so that a successor has a whole TTL to adopt the record. Best
/// effort, and bounded by [`LAST_RENEWAL`]: shutting down never waits for etcd long.
pub(crate) async fn renew_once(client: &mut Client, lease: i64) {
    match tokio::time::timeout(LAST_RENEWAL, renew(client, lease)).await {
        Ok(Ok(Some(r))) if r.ttl() > 0 => tracing::info!(
            lease,
            ttl = r.ttl(),
            "lease renewed; this node stays a member until it expires or a new flaxd adopts it"
        ),
        Ok(Ok(_)) => tracing::warn!(lease, "the lease had already expired"),
        Ok(Err(e)) => {
            tracing::warn!(lease, error = %linen::error::chain(&e), "cannot renew the lease on the way out")
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
    timed(
        "delete of the node's holder",
        client.delete(holder_key(prefix, node), None),
    )
    .await?;
    Ok(Left {
        was_member: true,
        revoked,
    })
}

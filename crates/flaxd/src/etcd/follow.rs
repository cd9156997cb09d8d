//! Following `<prefix>/nodes/`: list, then watch from the list's revision + 1; on a
//! compacted revision, list again; on a broken stream, resume from the last revision seen.

use std::convert::Infallible;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tokio_util::sync::CancellationToken;

use super::{EtcdError, REQUEST_TIMEOUT, nodes_prefix};
use crate::backoff::Backoff;
use crate::membership::{MemberRecord, Membership, Publisher};

/// A membership known as of an etcd revision: where a watch can resume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    pub members: Membership,
    pub revision: i64,
}

/// Publishes the members under `prefix` until `shutdown`, starting from `resume` when given
/// (e.g. a membership read earlier) or from a fresh list. Never gives up: errors are logged
/// and retried with backoff; the publisher is marked disconnected meanwhile.
pub async fn follow_members(
    client: Client,
    prefix: &str,
    publisher: &Publisher,
    mut resume: Option<Resume>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let err = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = follow_once(client.clone(), prefix, publisher, &mut resume, &mut backoff) => match r {
                Err(e) => e,
                Ok(never) => match never {},
            },
        };
        match err {
            EtcdError::Compacted { revision } => {
                tracing::info!(revision, "etcd compacted past our watch; listing again");
                resume = None;
                continue;
            }
            e => {
                publisher.set_connected(false);
                tracing::warn!(error = %linen::error::chain(&e), "etcd membership watch failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

async fn follow_once(
    mut client: Client,
    prefix: &str,
    publisher: &Publisher,
    resume: &mut Option<Resume>,
    backoff: &mut Backoff,
) -> Result<Infallible, EtcdError> {
    let prefix = nodes_prefix(prefix);
    let state = match resume.take() {
        Some(r) => r,
        None => list(&mut client, &prefix).await?,
    };
    publisher.publish(state.members.clone());
    let state = resume.insert(state);
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(state.revision + 1);
    let mut stream =
        tokio::time::timeout(REQUEST_TIMEOUT, client.watch(prefix.as_bytes(), Some(opts)))
            .await
            .map_err(|_| EtcdError::Timeout { step: "watch" })?
            .map_err(|source| EtcdError::Request {
                step: "watch",
                source,
            })?;
    loop {
        let resp = stream
            .message()
            .await
            .map_err(|source| EtcdError::Request {
                step: "watch stream",
                source,
            })?
            .ok_or(EtcdError::StreamEnded)?;
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(EtcdError::Compacted {
                    revision: resp.compact_revision(),
                });
            }
            return Err(EtcdError::WatchCanceled {
                reason: resp.cancel_reason().to_owned(),
            });
        }
        if resp.created() {
            backoff.reset();
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            state.revision = state.revision.max(kv.mod_revision());
            let Some(name) = node_name(&prefix, kv) else {
                continue;
            };
            match ev.event_type() {
                EventType::Delete => {
                    if state.members.remove(&name).is_some() {
                        tracing::info!(node = name, "node left");
                    }
                }
                EventType::Put => match MemberRecord::parse(kv.value()) {
                    Ok(m) => {
                        if state.members.insert(name.clone(), m.clone()).as_ref() != Some(&m) {
                            tracing::info!(node = name, vtep = %m.vtep, pod_cidrs = ?m.pod_cidrs, "node joined or changed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = name, key = %String::from_utf8_lossy(kv.key()), error = %linen::error::chain(&e), "skipping malformed member record");
                        state.members.remove(&name);
                    }
                },
            }
        }
        if let Some(h) = resp.header() {
            state.revision = state.revision.max(h.revision());
        }
        publisher.publish(state.members.clone());
    }
}

/// Reads every member record under the prefix, at one revision.
async fn list(client: &mut Client, prefix: &str) -> Result<Resume, EtcdError> {
    let resp = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.get(prefix.as_bytes(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| EtcdError::Timeout { step: "list" })?
    .map_err(|source| EtcdError::Request {
        step: "list",
        source,
    })?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut members = Membership::new();
    for kv in resp.kvs() {
        let Some(name) = node_name(prefix, kv) else {
            continue;
        };
        match MemberRecord::parse(kv.value()) {
            Ok(m) => {
                members.insert(name, m);
            }
            Err(e) => {
                tracing::warn!(node = name, error = %linen::error::chain(&e), "skipping malformed member record");
            }
        }
    }
    tracing::debug!(revision, members = members.len(), "listed etcd members");
    Ok(Resume { members, revision })
}

/// The node name a key holds, if it is a well-formed member key.
fn node_name(prefix: &str, kv: &KeyValue) -> Option<String> {
    let key = std::str::from_utf8(kv.key()).ok()?;
    let name = key.strip_prefix(prefix)?;
    if name.is_empty() || name.contains('/') {
        tracing::warn!(key, "skipping a key that names no node");
        return None;
    }
    Some(name.to_owned())
}

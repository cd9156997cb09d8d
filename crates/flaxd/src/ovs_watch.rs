//! Wakes the reconciler whenever the OVS rows it manages may have changed: an OVSDB
//! `monitor` on the columns Linen writes (no polling), reconnected with backoff. Every
//! (re)connection is itself a trigger, since anything may have happened while disconnected
//! (an ovsdb-server restarted on an emptied database, a bridge deleted).
//!
//! It also follows Linen's Controller rows (`is_connected`, set by ovs-vswitchd) into the
//! metrics; a change of connection state alone is not a reason to reconcile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ovsdb::vswitch::{Bridge, Controller, Interface, OpenVSwitch, Port, Table};
use ovsdb::{Client, MonitorRequest, TableUpdates, Uuid};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// The columns whose changes matter: those Linen writes, not those ovs-vswitchd updates
/// (statistics, status, ofport), so the daemon does not wake for its own side effects.
fn requests() -> Vec<(&'static str, MonitorRequest)> {
    vec![
        (OpenVSwitch::NAME, MonitorRequest::columns(["bridges"])),
        (
            Bridge::NAME,
            MonitorRequest::columns([
                "name",
                "ports",
                "controller",
                "fail_mode",
                "datapath_type",
                "external_ids",
            ]),
        ),
        (
            Port::NAME,
            MonitorRequest::columns(["name", "interfaces", "protected", "external_ids"]),
        ),
        (
            Interface::NAME,
            MonitorRequest::columns(["name", "type", "options", "external_ids"]),
        ),
        (
            Controller::NAME,
            MonitorRequest::columns(Controller::COLUMNS),
        ),
    ]
}

/// Linen's Controller rows as last seen, for the metrics.
#[derive(Debug, Default)]
struct Controllers(BTreeMap<Uuid, Controller>);

impl Controllers {
    /// Applies one batch; returns whether it changed anything but connection state (a row
    /// inserted or deleted, a target or owner changed), which the reconciler must see.
    fn apply(&mut self, updates: &TableUpdates) -> bool {
        let Some(rows) = updates.get(Controller::NAME) else {
            return false;
        };
        let mut structural = false;
        for (uuid, u) in rows {
            match &u.new {
                Some(new) => {
                    // A modify's `old` holds only the changed columns.
                    structural |= u.old.as_ref().is_none_or(|old| {
                        old.get("target").is_some() || old.get("external_ids").is_some()
                    });
                    match Controller::from_row(*uuid, new) {
                        Ok(c) => {
                            self.0.insert(*uuid, c);
                        }
                        Err(e) => tracing::debug!(error = %e, "undecodable Controller row"),
                    }
                }
                None => {
                    structural = true;
                    self.0.remove(uuid);
                }
            }
        }
        structural
    }

    fn publish(&self, metrics: &Metrics) {
        let ours = || {
            self.0
                .values()
                .filter(|c| linen::model::is_owned(&c.external_ids))
        };
        metrics
            .controllers
            .store(ours().count() as u64, Ordering::Relaxed);
        metrics.controllers_connected.store(
            ours().filter(|c| c.is_connected).count() as u64,
            Ordering::Relaxed,
        );
    }
}

/// Monitors OVSDB at `addr` until `shutdown`, notifying `changed` on every update and after
/// every (re)connection.
pub async fn watch_ovs(
    addr: String,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let session = async {
            let client = Client::connect(&addr).await?;
            let mut mon = client.monitor(ovsdb::vswitch::DB, requests()).await?;
            backoff.reset();
            metrics.ovsdb_connected.store(true, Ordering::Relaxed);
            tracing::info!(addr, "watching OVSDB");
            let mut controllers = Controllers::default();
            controllers.apply(&mon.take_initial());
            controllers.publish(&metrics);
            changed.notify_one();
            loop {
                match mon.recv().await {
                    Ok(updates) => {
                        let structural = controllers.apply(&updates);
                        controllers.publish(&metrics);
                        if structural || updates.keys().any(|t| t != Controller::NAME) {
                            changed.notify_one();
                        }
                    }
                    Err(ovsdb::Error::Decode { .. }) => changed.notify_one(),
                    Err(e) => return Err::<(), ovsdb::Error>(e),
                }
            }
        };
        let err = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session => r.err(),
        };
        if metrics.ovsdb_connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(addr, error = ?err, "lost the OVSDB monitor; reconnecting");
        } else {
            tracing::debug!(addr, error = ?err, "cannot monitor OVSDB yet");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

//! Wakes the reconciler whenever the OVS rows it manages may have changed: an OVSDB
//! `monitor` on the columns Linen writes (no polling), reconnected with backoff. Every
//! (re)connection is itself a trigger, since anything may have happened while disconnected
//! (an ovsdb-server restarted on an emptied database, a bridge deleted).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ovsdb::vswitch::{Bridge, Interface, OpenVSwitch, Port, Table};
use ovsdb::{Client, MonitorRequest};
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
    ]
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
            changed.notify_one();
            loop {
                match mon.recv().await {
                    Ok(_) => changed.notify_one(),
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

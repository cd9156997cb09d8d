//! Operational state: counters the reconciler and the watchers update, rendered in the
//! Prometheus text format, and a small HTTP server for `/metrics` and `/healthz`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shared by every task of one daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    pub members: AtomicU64,
    pub tunnels: AtomicU64,
    /// Tunnels left out because a port Linen does not own holds their name.
    pub conflicts: AtomicU64,
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    /// Sum of reconcile durations, in microseconds.
    reconcile_micros: AtomicU64,
    last_reconcile_micros: AtomicU64,
    pub source_connected: AtomicBool,
    pub source_synced: AtomicBool,
    pub ovsdb_connected: AtomicBool,
    pub conflist_writes: AtomicU64,
    /// Times this node's member record was found deleted or overwritten and put back.
    pub record_restores: AtomicU64,
    /// Why this node is not a member right now (its record was deleted or overwritten and is
    /// not back yet); `None` while it is, or when the source registers nothing.
    not_member: Mutex<Option<String>>,
    /// Why the last reconcile failed; `None` after a success or before the first one.
    last_error: Mutex<Option<String>>,
    /// Why this node's pod subnet is refused (another node holds it); `None` when it is not.
    pod_cidr_conflict: Mutex<Option<String>>,
    reconciled_once: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// Records one reconcile pass and its outcome.
    pub fn record_reconcile(&self, took: Duration, error: Option<String>) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.reconcile_micros.fetch_add(micros, Ordering::Relaxed);
        self.last_reconcile_micros.store(micros, Ordering::Relaxed);
        if error.is_some() {
            self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reconciled_once.store(true, Ordering::Relaxed);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Sets or clears the pod subnet conflict.
    pub fn set_pod_cidr_conflict(&self, why: Option<String>) {
        *self
            .pod_cidr_conflict
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// The pod subnet conflict, if there is one.
    pub fn pod_cidr_conflict(&self) -> Option<String> {
        self.pod_cidr_conflict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records that this node's member record is lost (`Some`) or in place again (`None`);
    /// a loss followed by its restore counts in `record_restores`.
    pub fn set_not_member(&self, why: Option<String>) {
        let mut slot = self.not_member.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() && why.is_none() {
            self.record_restores.fetch_add(1, Ordering::Relaxed);
        }
        *slot = why;
    }

    /// Why this node is not a member right now, if it is not.
    pub fn not_member(&self) -> Option<String> {
        self.not_member
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Healthy once a reconcile pass has succeeded and the last one did, this node's pod
    /// subnet is not refused, and its member record is in place.
    pub fn health(&self) -> Result<(), String> {
        if let Some(why) = self.pod_cidr_conflict() {
            return Err(format!("pod CIDR conflict: {why}"));
        }
        if let Some(why) = self.not_member() {
            return Err(format!("not a member: {why}"));
        }
        if let Some(e) = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(format!("last reconcile failed: {e}"));
        }
        if !self.reconciled_once.load(Ordering::Relaxed) {
            return Err("not reconciled yet (waiting for the membership source)".into());
        }
        Ok(())
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let b = |a: &AtomicBool| u64::from(a.load(Ordering::Relaxed));
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let secs = |micros: u64| format!("{}", micros as f64 / 1e6);
        metric(
            "flaxd_members",
            "gauge",
            "Nodes in the last membership snapshot, this one included.",
            n(&self.members).to_string(),
        );
        metric(
            "flaxd_tunnels",
            "gauge",
            "Tunnels flaxd wants on this node after the last reconcile.",
            n(&self.tunnels).to_string(),
        );
        metric(
            "flaxd_tunnel_conflicts",
            "gauge",
            "Tunnels left out because a port Linen does not own holds their name.",
            n(&self.conflicts).to_string(),
        );
        metric(
            "flaxd_reconcile_total",
            "counter",
            "Reconcile passes.",
            n(&self.reconciles).to_string(),
        );
        metric(
            "flaxd_reconcile_errors_total",
            "counter",
            "Reconcile passes that failed.",
            n(&self.reconcile_errors).to_string(),
        );
        metric(
            "flaxd_reconcile_duration_seconds_sum",
            "counter",
            "Total time spent reconciling.",
            secs(n(&self.reconcile_micros)),
        );
        metric(
            "flaxd_reconcile_last_duration_seconds",
            "gauge",
            "Duration of the last reconcile pass.",
            secs(n(&self.last_reconcile_micros)),
        );
        metric(
            "flaxd_source_connected",
            "gauge",
            "1 when the membership source is connected to its backend.",
            b(&self.source_connected).to_string(),
        );
        metric(
            "flaxd_source_synced",
            "gauge",
            "1 once the membership source has read the whole membership.",
            b(&self.source_synced).to_string(),
        );
        metric(
            "flaxd_ovsdb_connected",
            "gauge",
            "1 while the OVSDB monitor is connected.",
            b(&self.ovsdb_connected).to_string(),
        );
        metric(
            "flaxd_pod_cidr_conflict",
            "gauge",
            "1 while this node's pod subnet overlaps another node's allocation (not joining).",
            u64::from(self.pod_cidr_conflict().is_some()).to_string(),
        );
        metric(
            "flaxd_member_record_lost",
            "gauge",
            "1 while this node's member record is deleted or overwritten and not yet put back.",
            u64::from(self.not_member().is_some()).to_string(),
        );
        metric(
            "flaxd_member_record_restores_total",
            "counter",
            "Times this node's member record was found deleted or overwritten and put back.",
            n(&self.record_restores).to_string(),
        );
        metric(
            "flaxd_conflist_writes_total",
            "counter",
            "Times the CNI conflist was (re)written.",
            n(&self.conflist_writes).to_string(),
        );
        out
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "metrics server: connection error");
                },
            }
        });
    }
}

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
pub async fn spawn_server(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, metrics, shutdown));
    Ok(local)
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.method() != hyper::Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => match metrics.health() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.members.store(3, Ordering::Relaxed);
        m.tunnels.store(2, Ordering::Relaxed);
        m.record_reconcile(Duration::from_millis(1500), None);
        m.record_reconcile(Duration::from_millis(500), Some("boom".into()));
        let text = m.render();
        for line in [
            "flaxd_members 3",
            "flaxd_tunnels 2",
            "flaxd_reconcile_total 2",
            "flaxd_reconcile_errors_total 1",
            "flaxd_reconcile_duration_seconds_sum 2",
            "flaxd_reconcile_last_duration_seconds 0.5",
            "flaxd_source_connected 0",
            "# TYPE flaxd_reconcile_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Every sample line is `name value` with a number.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.split_once(' ').unwrap();
            assert!(name.starts_with("flaxd_"), "{l}");
            value.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn health_follows_the_last_reconcile() {
        let m = Metrics::new();
        assert!(m.health().is_err(), "not reconciled yet");
        m.record_reconcile(Duration::ZERO, None);
        assert!(m.health().is_ok());
        m.record_reconcile(Duration::ZERO, Some("ovsdb down".into()));
        assert!(m.health().unwrap_err().contains("ovsdb down"));
        m.record_reconcile(Duration::ZERO, None);
        assert!(m.health().is_ok());
        m.set_pod_cidr_conflict(Some("10.244.1.0/24 is b's".into()));
        assert!(m.health().unwrap_err().contains("pod CIDR conflict"));
        assert!(m.render().lines().any(|l| l == "flaxd_pod_cidr_conflict 1"));
        m.set_pod_cidr_conflict(None);
        assert!(m.health().is_ok());
        assert!(m.render().lines().any(|l| l == "flaxd_pod_cidr_conflict 0"));
    }
}

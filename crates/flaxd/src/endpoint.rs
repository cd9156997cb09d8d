//! The HTTP endpoint (`/metrics`, `/healthz`, `/livez`), hardened against clients that
//! connect and never finish a request:
//!
//! - **A bounded number of connections.** At most [`Limits::connections`] are served at once;
//!   one more is closed at once (reset, so its descriptor is freed now, not after a FIN
//!   exchange). [`Limits::reserved_local`] more are kept for clients on this host (a peer
//!   address equal to the address it connected to: the kubelet's probes of a `hostNetwork`
//!   pod, `curl` on the node), so nothing off the node can starve the probes.
//! - **Timeouts.** The request head must arrive within [`Limits::header_read_timeout`];
//!   every connection ends after [`Limits::connection_deadline`] whatever it does; keep-alive
//!   is off (one request per connection), so an idle connection holds nothing.
//! - **Accept errors** (`EMFILE`, `ENFILE`, ...) back off (10 ms doubling to 1 s) instead of
//!   spinning, and are logged at most once per [`LOG_EVERY`] with the count in between.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// The least time between two log lines about refused connections or accept errors.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How much the endpoint gives one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once, from anywhere.
    pub connections: usize,
    /// Further connections, only for clients on this host.
    pub reserved_local: usize,
    pub header_read_timeout: Duration,
    pub connection_deadline: Duration,
}

impl Default for Limits {
    /// Prometheus scrapes once per interval and the kubelet probes every few seconds: 32
    /// connections is far more than honest clients use; 8 are kept for the node's own.
    fn default() -> Self {
        Limits {
            connections: 32,
            reserved_local: 8,
            header_read_timeout: Duration::from_secs(5),
            connection_deadline: Duration::from_secs(10),
        }
    }
}

/// Serves on `listener` with the default [`Limits`] until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    serve_with(listener, metrics, Limits::default(), shutdown).await
}

/// Serves on `listener` with `limits` until `shutdown`.
pub async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let general = Arc::new(Semaphore::new(limits.connections));
    let reserved = Arc::new(Semaphore::new(limits.reserved_local));
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut accept_log = RateLimited::default();
    let mut refused_log = RateLimited::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    metrics.http_accept_errors.fetch_add(1, Ordering::Relaxed);
                    accept_log.log(|suppressed| tracing::warn!(error = %e, suppressed, "metrics server: accept failed; backing off"));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = backoff.wait() => {}
                    }
                    continue;
                }
            },
        };
        backoff.reset();
        let local = is_local(&stream, peer);
        let permit = general.clone().try_acquire_owned().ok().or_else(|| {
            local
                .then(|| reserved.clone().try_acquire_owned().ok())
                .flatten()
        });
        let Some(permit) = permit else {
            metrics.http_refused.fetch_add(1, Ordering::Relaxed);
            refused_log.log(|suppressed| tracing::warn!(%peer, suppressed, "metrics server: connection limit reached; closing new connections"));
            reset_on_close(&stream);
            drop(stream);
            continue;
        };
        metrics.http_connections.fetch_add(1, Ordering::Relaxed);
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let held = Held(&metrics.http_connections);
            let m = metrics.clone();
            let svc = hyper::service::service_fn(move |req| {
                let m = m.clone();
                async move { Ok::<_, Infallible>(respond(&req, &m)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = tokio::time::timeout(limits.connection_deadline, conn) => match r {
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics server: connection error"),
                    Err(_) => tracing::debug!(%peer, "metrics server: connection deadline"),
                    Ok(Ok(())) => {}
                },
            }
            drop(held);
            drop(permit);
        });
    }
}

/// Makes closing `stream` send a reset: the descriptor and the kernel's socket are released
/// at once, not after the peer's FIN (a zero linger never blocks the closing thread).
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a descriptor owned by `stream`, and an option value of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A client on this host: it connected from the very address it connected to.
fn is_local(stream: &TcpStream, peer: SocketAddr) -> bool {
    let canon = |ip: IpAddr| ip.to_canonical();
    stream
        .local_addr()
        .is_ok_and(|l| canon(l.ip()) == canon(peer.ip()))
}

/// Decrements the connection gauge when the connection ends, however it ends.
struct Held<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Logs at most once per [`LOG_EVERY`], with the number of events not logged since.
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn log(&mut self, emit: impl FnOnce(u64)) {
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        emit(self.suppressed);
        self.suppressed = 0;
        self.last = Some(Instant::now());
    }
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
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
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
        // The liveness probe: the process serves HTTP (a failing reconcile or a lost
        // membership is /healthz's business: unready, not restarted in a loop).
        "/livez" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_logs_once_per_period_and_counts_the_rest() {
        let mut r = RateLimited::default();
        let mut lines = Vec::new();
        for _ in 0..1000 {
            r.log(|s| lines.push(s));
        }
        assert_eq!(lines, [0]);
        assert_eq!(r.suppressed, 999);
        r.last = Some(Instant::now() - LOG_EVERY);
        r.log(|s| lines.push(s));
        assert_eq!(lines, [0, 999]);
    }
}

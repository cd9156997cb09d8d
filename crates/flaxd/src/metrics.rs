//! Operational state: counters the reconciler and the watchers update, rendered in the
//! Prometheus text format (served by [`crate::endpoint`]).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Shared by every task of one daemon.
#[derive(Debug)]
pub struct Metrics {
    pub members: AtomicU64,
    pub tunnels: AtomicU64,
    /// Tunnels left out because a port Linen does not own holds their name.
    pub conflicts: AtomicU64,
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    reconcile_duration: Histogram,
    last_reconcile_micros: AtomicU64,
    pub source_connected: AtomicBool,
    pub source_synced: AtomicBool,
    pub ovsdb_connected: AtomicBool,
    pub conflist_writes: AtomicU64,
    /// Linen's controller rows on the bridge, and how many ovs-vswitchd reports connected.
    pub controllers: AtomicU64,
    pub controllers_connected: AtomicU64,
    /// Times this node's member record was found deleted or overwritten and put back.
    pub record_restores: AtomicU64,
    /// Connections the HTTP endpoint serves now.
    pub http_connections: AtomicU64,
    /// Connections it closed at once because it was at its limit.
    pub http_refused: AtomicU64,
    /// `accept()` failures (e.g. out of file descriptors).
    pub http_accept_errors: AtomicU64,
    /// Why this node is not a member right now (its record was deleted or overwritten and is
    /// not back yet); `None` while it is, or when the source registers nothing.
    not_member: Mutex<Option<String>>,
    /// Why the last reconcile failed; `None` after a success or before the first one.
    last_error: Mutex<Option<String>>,
    /// Why this node's pod subnet is refused (another node holds it); `None` when it is not.
    pod_cidr_conflict: Mutex<Option<String>>,
    reconciled_once: AtomicBool,
    /// `--ip-masq`: flaxd keeps the egress masquerade table.
    pub ip_masq_enabled: AtomicBool,
    /// The masquerade table was found (or made) as flaxd wants it at the last check.
    pub ip_masq_rules_ok: AtomicBool,
    /// Times the table was found changed or removed by hand and put back.
    pub ip_masq_repairs: AtomicU64,
    /// Why the last masquerade check failed; `None` after a success.
    ip_masq_error: Mutex<Option<String>>,
}

/// Reconcile duration buckets: 1 ms to ~16 s (a pass at 5000 members took 7 s).
fn reconcile_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            members: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            reconciles: AtomicU64::new(0),
            reconcile_errors: AtomicU64::new(0),
            reconcile_duration: Histogram::new(reconcile_buckets()),
            last_reconcile_micros: AtomicU64::new(0),
            source_connected: AtomicBool::new(false),
            source_synced: AtomicBool::new(false),
            ovsdb_connected: AtomicBool::new(false),
            conflist_writes: AtomicU64::new(0),
            controllers: AtomicU64::new(0),
            controllers_connected: AtomicU64::new(0),
            record_restores: AtomicU64::new(0),
            http_connections: AtomicU64::new(0),
            http_refused: AtomicU64::new(0),
            http_accept_errors: AtomicU64::new(0),
            not_member: Mutex::new(None),
            last_error: Mutex::new(None),
            pod_cidr_conflict: Mutex::new(None),
            reconciled_once: AtomicBool::new(false),
            ip_masq_enabled: AtomicBool::new(false),
            ip_masq_rules_ok: AtomicBool::new(false),
            ip_masq_repairs: AtomicU64::new(0),
            ip_masq_error: Mutex::new(None),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// Records one reconcile pass and its outcome.
    pub fn record_reconcile(&self, took: Duration, error: Option<String>) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.reconcile_duration.observe(took.as_secs_f64());
        self.last_reconcile_micros.store(micros, Ordering::Relaxed);
        if error.is_some() {
            self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reconciled_once.store(true, Ordering::Relaxed);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Sets or clears the masquerade error.
    pub fn set_ip_masq_error(&self, why: Option<String>) {
        *self.ip_masq_error.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why the last masquerade check failed, if it did.
    pub fn ip_masq_error(&self) -> Option<String> {
        self.ip_masq_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        if let Some(why) = self.ip_masq_error() {
            return Err(format!("egress masquerade: {why}"));
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

    /// The OpenMetrics text exposition (what Prometheus scrapes), encoded by
    /// `prometheus-client`: `_total` counters, a real histogram of reconcile durations,
    /// `flaxd_build_info`, and the standard `process_*` metrics.
    pub fn render(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let b = |a: &AtomicBool| u64::from(a.load(Ordering::Relaxed));
        let values = Values(vec![
            Value::gauge(
                "members",
                "Nodes in the last membership snapshot, this one included.",
                n(&self.members),
            ),
            Value::gauge(
                "tunnels",
                "Tunnels flaxd wants on this node after the last reconcile.",
                n(&self.tunnels),
            ),
            Value::gauge(
                "tunnel_conflicts",
                "Tunnels left out because a port Linen does not own holds their name.",
                n(&self.conflicts),
            ),
            Value::counter("reconciles", "Reconcile passes.", n(&self.reconciles)),
            Value::counter(
                "reconcile_errors",
                "Reconcile passes that failed.",
                n(&self.reconcile_errors),
            ),
            Value::gauge_f(
                "reconcile_last_duration_seconds",
                "Duration of the last reconcile pass.",
                n(&self.last_reconcile_micros) as f64 / 1e6,
            ),
            Value::gauge(
                "source_connected",
                "1 when the membership source is connected to its backend.",
                b(&self.source_connected),
            ),
            Value::gauge(
                "source_synced",
                "1 once the membership source has read the whole membership.",
                b(&self.source_synced),
            ),
            Value::gauge(
                "ovsdb_connected",
                "1 while the OVSDB monitor is connected.",
                b(&self.ovsdb_connected),
            ),
            Value::gauge(
                "pod_cidr_conflict",
                "1 while this node's pod subnet overlaps another node's allocation (not joining).",
                u64::from(self.pod_cidr_conflict().is_some()),
            ),
            Value::counter(
                "conflist_writes",
                "Times the CNI conflist was (re)written.",
                n(&self.conflist_writes),
            ),
            Value::gauge(
                "member_record_lost",
                "1 while this node's member record is deleted or overwritten and not yet put back.",
                u64::from(self.not_member().is_some()),
            ),
            Value::counter(
                "member_record_restores",
                "Times this node's member record was found deleted or overwritten and put back.",
                n(&self.record_restores),
            ),
            Value::gauge(
                "http_connections",
                "Connections the HTTP endpoint serves now.",
                n(&self.http_connections),
            ),
            Value::counter(
                "http_connections_refused",
                "Connections closed at once because the endpoint was at its connection limit.",
                n(&self.http_refused),
            ),
            Value::counter(
                "http_accept_errors",
                "accept() failures of the HTTP endpoint (e.g. out of file descriptors).",
                n(&self.http_accept_errors),
            ),
            Value::gauge(
                "ip_masq_enabled",
                "1 when flaxd keeps the egress masquerade rules (--ip-masq).",
                b(&self.ip_masq_enabled),
            ),
            Value::gauge(
                "ip_masq_rules_ok",
                "1 when the last check found or left the masquerade rules as flaxd wants them.",
                b(&self.ip_masq_rules_ok),
            ),
            Value::counter(
                "ip_masq_repairs",
                "Times the masquerade rules were found changed or removed by hand and put back.",
                n(&self.ip_masq_repairs),
            ),
            Value::gauge(
                "controllers",
                "OpenFlow controllers Linen configured on the bridge.",
                n(&self.controllers),
            ),
            Value::gauge(
                "controllers_connected",
                "Of those, the ones ovs-vswitchd reports connected.",
                n(&self.controllers_connected),
            ),
        ]);
        let mut registry = Registry::default();
        let flaxd = registry.sub_registry_with_prefix("flaxd");
        flaxd.register_collector(Box::new(values));
        flaxd.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes.",
            self.reconcile_duration.clone(),
        );
        flaxd.register(
            "build",
            "flaxd's version.",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(ProcessCollector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding into a String cannot fail");
        out
    }
}

/// One scrape's values of flaxd's own gauges and counters.
#[derive(Debug)]
struct Values(Vec<Value>);

#[derive(Debug)]
struct Value {
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Gauge(u64),
    GaugeF(f64),
    Counter(u64),
}

impl Value {
    fn gauge(name: &'static str, help: &'static str, v: u64) -> Self {
        Value {
            name,
            help,
            kind: Kind::Gauge(v),
        }
    }
    fn gauge_f(name: &'static str, help: &'static str, v: f64) -> Self {
        Value {
            name,
            help,
            kind: Kind::GaugeF(v),
        }
    }
    fn counter(name: &'static str, help: &'static str, v: u64) -> Self {
        Value {
            name,
            help,
            kind: Kind::Counter(v),
        }
    }
}

impl Collector for Values {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for v in &self.0 {
            match v.kind {
                Kind::Gauge(x) => ConstGauge::new(x as i64).encode(encoder.encode_descriptor(
                    v.name,
                    v.help,
                    None,
                    MetricType::Gauge,
                )?)?,
                Kind::GaugeF(x) => ConstGauge::new(x).encode(encoder.encode_descriptor(
                    v.name,
                    v.help,
                    None,
                    MetricType::Gauge,
                )?)?,
                Kind::Counter(x) => ConstCounter::new(x).encode(encoder.encode_descriptor(
                    v.name,
                    v.help,
                    None,
                    MetricType::Counter,
                )?)?,
            }
        }
        Ok(())
    }
}

/// The standard process metrics (the names every Prometheus client library exports), read
/// from /proc/self at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(p) = process_stats() else {
            return Ok(());
        };
        ConstCounter::new(p.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.rss_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.vsize_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
        ] {
            ConstGauge::new(v as i64).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: u64,
    vsize_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    start_time_seconds: u64,
}

/// /proc/self/stat (fields after the command name, see proc(5)), /proc/self/fd, the
/// open-files soft limit from /proc/self/limits and the boot time from /proc/stat.
fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // fields[0] is field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    // SAFETY: as above.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    // The soft limit: "Max open files  SOFT  HARD  files".
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Max open files")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })?;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks as f64,
        vsize_bytes: field(23)?,
        rss_bytes: field(24)? * page,
        open_fds,
        max_fds,
        start_time_seconds: boot + field(22)? / ticks,
    })
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
            "# TYPE flaxd_reconciles counter",
            "flaxd_reconciles_total 2",
            "flaxd_reconcile_errors_total 1",
            "# TYPE flaxd_reconcile_duration_seconds histogram",
            "flaxd_reconcile_duration_seconds_sum 2.0",
            "flaxd_reconcile_duration_seconds_count 2",
            // 0.5 s is in the 0.512 s bucket, 1.5 s only from the 2.048 s bucket on.
            "flaxd_reconcile_duration_seconds_bucket{le=\"0.512\"} 1",
            "flaxd_reconcile_duration_seconds_bucket{le=\"2.048\"} 2",
            "flaxd_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "flaxd_reconcile_last_duration_seconds 0.5",
            "flaxd_source_connected 0",
            &format!(
                "flaxd_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
            "# TYPE process_cpu_seconds counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Every sample line is `name[{labels}] value` with a number; the process metrics
        // hold real values.
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} in\n{text}"))
                .parse()
                .unwrap()
        };
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, v) = l.rsplit_once(' ').unwrap();
            assert!(
                name.starts_with("flaxd_") || name.starts_with("process_"),
                "{l}"
            );
            v.parse::<f64>().unwrap();
        }
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now && started > now - 3600.0,
            "{started} vs {now}"
        );
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

//! Section 3: pod churn through the full chain. At each concurrency, N pods are ADDed
//! (N namespaces made beforehand, untimed), then all DELeted; then the node is checked for
//! leaks against a snapshot taken before: veth links, host-local reservations, OVS rows,
//! pod namespaces, CNI cache entries.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use cni::runtime::{Exec, NetworkConfigList};
use serde::{Deserialize, Serialize};

use crate::bed::{self, Bed, NodeCtx, PodNs};
use crate::stats::Summary;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Leaks {
    /// Links in the node namespace that were not there before.
    pub links: Vec<String>,
    /// host-local reservations that were not there before.
    pub reservations: Vec<String>,
    /// Extra (Bridge, Port, Interface) rows beyond the shared bridge and tunnels.
    pub ovs_rows: [i64; 3],
    /// Pod namespaces still present.
    pub namespaces: Vec<String>,
    /// CNI cache entries of the churned pods still present.
    pub cache_entries: usize,
}

impl Leaks {
    pub fn total(&self) -> usize {
        self.links.len()
            + self.reservations.len()
            + self
                .ovs_rows
                .iter()
                .map(|r| r.unsigned_abs() as usize)
                .sum::<usize>()
            + self.namespaces.len()
            + self.cache_entries
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Level {
    pub concurrency: usize,
    pub pods: usize,
    pub add_pods_per_s: f64,
    pub del_pods_per_s: f64,
    /// N / (ADD phase + DEL phase).
    pub churn_pods_per_s: f64,
    pub add_ms: Summary,
    pub del_ms: Summary,
    pub failures: usize,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
    pub leaks: Leaks,
    pub leak_total: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Churn {
    pub levels: Vec<Level>,
}

struct Snapshot {
    links: Vec<String>,
    reservations: Vec<String>,
    ovs_rows: [usize; 3],
}

fn snapshot(n: &NodeCtx<'_>) -> Result<Snapshot> {
    Ok(Snapshot {
        links: n.links()?,
        reservations: n.reservations()?,
        ovs_rows: n.ovs_rows()?,
    })
}

pub fn run(bed: &Bed, pods: usize, levels: &[usize]) -> Result<Churn> {
    let n = bed.node(0);
    let chain = n.chain(&bed.vteps())?;
    let exec = n.exec();
    // Warm the node: the shared bridge and tunnels exist before the snapshot.
    {
        let pod = n.pod()?;
        exec.add_network_list(&chain, &pod.rt())
            .context("warm-up ADD")?;
        exec.del_network_list(&chain, &pod.rt())
            .context("warm-up DEL")?;
    }
    let before = snapshot(&n)?;
    let mut out = Vec::new();
    for &c in levels {
        out.push(level(&n, &exec, &chain, pods, c, &before)?);
        tracing::info!(concurrency = c, "churn measured");
    }
    Ok(Churn { levels: out })
}

fn level(
    n: &NodeCtx<'_>,
    exec: &Exec,
    chain: &NetworkConfigList,
    count: usize,
    concurrency: usize,
    before: &Snapshot,
) -> Result<Level> {
    let pods: Vec<PodNs> = (0..count).map(|_| n.pod()).collect::<Result<_>>()?;
    let names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    let ids: Vec<String> = pods.iter().map(|p| p.container_id.clone()).collect();
    let errors = Mutex::new(Vec::new());

    let add = |p: &PodNs| exec.add_network_list(chain, &p.rt()).map(drop);
    let (add_wall, add_ms) = phase(&pods, concurrency, &errors, "ADD", add);
    let del = |p: &PodNs| exec.del_network_list(chain, &p.rt());
    let (del_wall, del_ms) = phase(&pods, concurrency, &errors, "DEL", del);
    drop(pods);
    crate::stop::check()?;

    let after = snapshot(n)?;
    let new = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    let cached = exec
        .cached_attachments(bed::NETWORK)
        .map(|v| {
            v.iter()
                .filter(|a| ids.contains(&a.runtime_conf.container_id))
                .count()
        })
        .unwrap_or(0);
    let leaks = Leaks {
        links: new(&after.links, &before.links),
        reservations: new(&after.reservations, &before.reservations),
        ovs_rows: std::array::from_fn(|i| after.ovs_rows[i] as i64 - before.ovs_rows[i] as i64),
        namespaces: names
            .iter()
            .filter(|name| std::path::Path::new("/var/run/netns").join(name).exists())
            .cloned()
            .collect(),
        cache_entries: cached,
    };
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    let secs = |d: std::time::Duration| d.as_secs_f64().max(1e-9);
    Ok(Level {
        concurrency,
        pods: count,
        add_pods_per_s: count as f64 / secs(add_wall),
        del_pods_per_s: count as f64 / secs(del_wall),
        churn_pods_per_s: count as f64 / secs(add_wall + del_wall),
        add_ms: Summary::of(&add_ms).context("no ADD samples")?,
        del_ms: Summary::of(&del_ms).context("no DEL samples")?,
        failures: errors.len(),
        errors: errors.into_iter().take(5).collect(),
        leak_total: leaks.total(),
        leaks,
    })
}

/// Runs `op` on every pod from `concurrency` threads; (wall time, per-op ms).
fn phase<E: std::fmt::Display>(
    pods: &[PodNs],
    concurrency: usize,
    errors: &Mutex<Vec<String>>,
    verb: &str,
    op: impl Fn(&PodNs) -> Result<(), E> + Sync,
) -> (std::time::Duration, Vec<f64>) {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(pods.len()));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(pod) = pods.get(i) else { break };
                    if crate::stop::check().is_err() {
                        break;
                    }
                    let t = Instant::now();
                    let res = op(pod);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
                    if let Err(e) = res {
                        errors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{verb} {}: {e}", pod.name));
                    }
                }
            });
        }
    });
    let wall = started.elapsed();
    (
        wall,
        samples.into_inner().unwrap_or_else(|e| e.into_inner()),
    )
}

//! The side effect the reconciler needs, behind a trait sized to it: make the bridge and the
//! flaxd-managed tunnels what the membership says. [`OvsOverlay`] does it through
//! [`linen::ovs::Ovs::ensure`] (one transaction, retried races, waits for ovs-vswitchd);
//! [`RecordingOverlay`] records calls for unit tests.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use linen::model::{BridgeSpec, PlanError, Source, SslSpec, TunnelSpec};
use linen::ovs::{Ensured, Ovs, OvsError};

/// Applies the overlay's desired state.
pub trait Overlay: Send + Sync + 'static {
    /// Makes the bridge exist and its tunnels be exactly `tunnels` among those of source
    /// `prune` (others' tunnels and rows Linen does not own are left alone). Idempotent: in
    /// step, it changes nothing. Fails with [`OvsError`]: `Unreachable`/`Ovsdb` when OVSDB is
    /// down (retry later), `Conflict` when a row Linen does not own is in the way, `NotApplied`
    /// when ovs-vswitchd did not act on the change in time (the database already holds it).
    fn ensure(
        &self,
        bridge: &BridgeSpec,
        tunnels: &[TunnelSpec],
        prune: Option<Source>,
    ) -> impl Future<Output = Result<Ensured, OvsError>> + Send;
}

/// The real overlay: Open vSwitch through its OVSDB socket. Connects on first use and again
/// after any connection failure, so an ovsdb-server restart heals by itself.
pub struct OvsOverlay {
    addr: String,
    /// The SSL settings for `ssl:` controllers, kept with every pass like the bridge.
    ssl: Option<SslSpec>,
    conn: tokio::sync::Mutex<Option<Ovs>>,
}

impl OvsOverlay {
    /// Does not connect yet: OVSDB may come up after flaxd.
    pub fn new(addr: impl Into<String>) -> Self {
        OvsOverlay {
            addr: addr.into(),
            ssl: None,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Also keeps the `Open_vSwitch` table's SSL row at `ssl` (see
    /// [`linen::ovs::Ovs::ensure_ssl`]).
    pub fn with_ssl(mut self, ssl: Option<SslSpec>) -> Self {
        self.ssl = ssl;
        self
    }

    async fn connection(&self) -> Result<Ovs, OvsError> {
        let mut conn = self.conn.lock().await;
        if let Some(ovs) = conn.as_ref().filter(|o| !o.is_closed()) {
            return Ok(ovs.clone());
        }
        let ovs = Ovs::connect(&self.addr).await?;
        *conn = Some(ovs.clone());
        Ok(ovs)
    }
}

impl Overlay for OvsOverlay {
    async fn ensure(
        &self,
        bridge: &BridgeSpec,
        tunnels: &[TunnelSpec],
        prune: Option<Source>,
    ) -> Result<Ensured, OvsError> {
        let ovs = self.connection().await?;
        let res = match &self.ssl {
            Some(ssl) => match ovs.ensure_ssl(ssl).await {
                Ok(_) => ovs.ensure(bridge, tunnels, prune).await,
                Err(e) => Err(e),
            },
            None => ovs.ensure(bridge, tunnels, prune).await,
        };
        if matches!(res, Err(OvsError::Contended { .. })) && !has_root_row(&ovs).await {
            // Every write then matches no Open_vSwitch row and looks like a lost race.
            tracing::error!(
                addr = self.addr,
                "the OVS database has no Open_vSwitch root row; creating it is the packaging's job (ovs-vsctl init)"
            );
        }
        if matches!(
            res,
            Err(OvsError::Ovsdb { .. } | OvsError::Unreachable { .. })
        ) {
            // Start from a fresh connection next time; a restarted server needs one.
            self.conn.lock().await.take();
        }
        res
    }
}

/// The root row is there, or the question could not be answered (then the contention is
/// reported as it is).
async fn has_root_row(ovs: &Ovs) -> bool {
    ovs.has_root_row().await.unwrap_or(true)
}

/// One call to [`RecordingOverlay::ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureCall {
    pub bridge: BridgeSpec,
    pub tunnels: Vec<TunnelSpec>,
    pub prune: Option<Source>,
}

/// A fake [`Overlay`] that records every call and fails with scripted errors.
#[derive(Clone, Default)]
pub struct RecordingOverlay {
    calls: Arc<Mutex<Vec<EnsureCall>>>,
    failures: Arc<Mutex<VecDeque<OvsError>>>,
    taken: Arc<Mutex<BTreeSet<IpAddr>>>,
}

impl RecordingOverlay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next call fail with `err` (queued: several calls, several errors).
    pub fn fail_next(&self, err: OvsError) {
        self.lock_failures().push_back(err);
    }

    /// Makes every call that wants a tunnel to `remote` fail as if a port Linen does not own
    /// held its name.
    pub fn name_taken(&self, remote: IpAddr) {
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(remote);
    }

    pub fn calls(&self) -> Vec<EnsureCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, VecDeque<OvsError>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Overlay for RecordingOverlay {
    async fn ensure(
        &self,
        bridge: &BridgeSpec,
        tunnels: &[TunnelSpec],
        prune: Option<Source>,
    ) -> Result<Ensured, OvsError> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(EnsureCall {
                bridge: bridge.clone(),
                tunnels: tunnels.to_vec(),
                prune,
            });
        let taken = self.taken.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(t) = tunnels.iter().find(|t| taken.contains(&t.remote)) {
            return Err(OvsError::Conflict(PlanError::NameTaken {
                name: t.name(),
                remote: t.remote,
                holder: "a port of bridge test not created by Linen".into(),
            }));
        }
        match self.lock_failures().pop_front() {
            Some(err) => Err(err),
            None => Ok(Ensured {
                applied: Vec::new(),
                flaxd_managed: prune == Some(Source::Flaxd),
            }),
        }
    }
}

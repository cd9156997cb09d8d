//! Linen's OVSDB side: read the rows [`crate::model`] describes, apply a plan in one
//! transaction, and wait until ovs-vswitchd has acted on it.
//!
//! Concurrency: many plugin processes (and flaxd) may write at once. Each attempt reads,
//! plans and writes; the write fails as a whole when the world changed under it (a unique
//! name already inserted, the bridge's controller set no longer what was read), and the
//! attempt is retried from a fresh read. No file lock is needed.

use std::collections::BTreeMap;
use std::time::Duration;

use ovsdb::vswitch::wait::{NextCfg, bump_next_cfg};
use ovsdb::vswitch::{self, Bridge, Controller, Interface, OpenVSwitch, Port, Ssl, Table};
use ovsdb::{Atom, Client, Condition, Datum, Mutation, Operation, Row, WaitUntil};
use uuid::Uuid;

use crate::model::{
    self, BridgeHead, BridgeSpec, DESIRED_KEY, FAIL_MODE, ObservedBridge, ObservedController,
    ObservedInterface, ObservedPort, Op, PlanError, PortsElsewhere, Source, SslSpec, TUNNELS_KEY,
    TunnelSpec,
};

/// How often a transaction that lost a race is retried from a fresh read.
const MAX_ATTEMPTS: usize = 20;
/// How long ovs-vswitchd may take to apply a change...
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// ...plus this much per planned operation: ovs-vswitchd needs seconds to add or remove
/// thousands of tunnels (5000 took longer than 10 s here), and a change it applies late is
/// not a failure.
const APPLY_TIMEOUT_PER_OP: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error("cannot reach OVSDB at {addr}")]
    Unreachable {
        addr: String,
        #[source]
        source: ovsdb::Error,
    },
    #[error("OVSDB {step} failed")]
    Ovsdb {
        step: &'static str,
        #[source]
        source: ovsdb::Error,
    },
    #[error(transparent)]
    Conflict(#[from] PlanError),
    #[error(
        "the Open_vSwitch table points at an SSL row Linen did not create (key {private_key}); Linen leaves it alone: remove it (ovs-vsctl del-ssl) or drop flaxd's --ssl-* settings"
    )]
    ForeignSsl { private_key: String },
    #[error(
        "the OVS database has no Open_vSwitch row (creating it is the packaging's job: ovs-vsctl init)"
    )]
    NoRootRow,
    #[error("OVSDB kept changing under {what} ({MAX_ATTEMPTS} attempts); giving up")]
    Contended { what: String },
    #[error(
        "ovs-vswitchd did not apply configuration {target} within {timeout:?} (is ovs-vswitchd running?)"
    )]
    NotApplied {
        target: i64,
        timeout: Duration,
        #[source]
        source: ovsdb::Error,
    },
}

pub type Result<T, E = OvsError> = std::result::Result<T, E>;

/// What [`Ovs::warm`] found: nothing to write.
#[derive(Debug, Clone)]
pub struct Warm {
    pub flaxd_managed: bool,
    /// The bridge's internal Interface row (Linen's, type internal).
    pub internal: Interface,
}

/// What [`Ovs::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The operations applied (empty when everything was in step).
    pub applied: Vec<Op>,
    /// The bridge's tunnels and controllers are flaxd's (see [`model`]'s ownership rule):
    /// the caller's, if it is the plugin, were left alone.
    pub flaxd_managed: bool,
}

/// A connection to one OVSDB server.
#[derive(Clone)]
pub struct Ovs {
    client: Client,
}

impl Ovs {
    pub async fn connect(addr: &str) -> Result<Self> {
        let client = Client::connect(addr)
            .await
            .map_err(|source| OvsError::Unreachable {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(Ovs { client })
    }

    /// The connection is gone (the server closed it or the transport failed): a new
    /// [`Ovs::connect`] is needed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Whether the database has its root `Open_vSwitch` row: a fresh ovsdb-server whose
    /// `ovs-vsctl init` has not run yet has none (and nothing can be applied until it has).
    pub async fn has_root_row(&self) -> Result<bool> {
        let select = Operation::select(OpenVSwitch::NAME, vec![]).columns(["_uuid"]);
        let res = self.transact(vec![select], "read of the root row").await?;
        Ok(res
            .first()
            .and_then(|r| r.rows.as_ref())
            .is_some_and(|rows| !rows.is_empty()))
    }

    /// Reads the bridge named `bridge` with its ports, interfaces and controllers, and the
    /// names of ports on other bridges, in one transaction.
    pub async fn observe(&self, bridge: &str) -> Result<(Option<ObservedBridge>, PortsElsewhere)> {
        let ops = vec![
            select::<Bridge>(vec![])
                .columns(Bridge::COLUMNS.iter().copied().chain(["_uuid", "_version"])),
            select::<Port>(vec![]),
            select::<Interface>(vec![]),
            select::<Controller>(vec![]),
        ];
        let res = self.transact(ops, "read of the bridge").await?;
        let rows = |i: usize| res.get(i).and_then(|r| r.rows.as_deref()).unwrap_or(&[]);
        let decode = |e| OvsError::Ovsdb {
            step: "decoding rows",
            source: e,
        };
        let bridges = Bridge::from_select(rows(0)).map_err(decode)?;
        let versions: BTreeMap<Uuid, String> = rows(0)
            .iter()
            .filter_map(|r| Some((r.uuid()?, version_of(r)?)))
            .collect();
        let ports: BTreeMap<Uuid, Port> = Port::from_select(rows(1))
            .map_err(decode)?
            .into_iter()
            .map(|p| (p.uuid, p))
            .collect();
        let ifaces: BTreeMap<Uuid, Interface> = Interface::from_select(rows(2))
            .map_err(decode)?
            .into_iter()
            .map(|i| (i.uuid, i))
            .collect();
        let ctls: BTreeMap<Uuid, Controller> = Controller::from_select(rows(3))
            .map_err(decode)?
            .into_iter()
            .map(|c| (c.uuid, c))
            .collect();

        let mut elsewhere = PortsElsewhere::new();
        let mut found = None;
        for b in bridges {
            if b.name != bridge {
                for p in b.ports.iter().filter_map(|u| ports.get(u)) {
                    elsewhere.insert(p.name.clone(), b.name.clone());
                }
                continue;
            }
            found = Some(ObservedBridge {
                uuid: b.uuid.to_string(),
                version: versions.get(&b.uuid).cloned().unwrap_or_default(),
                name: b.name.clone(),
                datapath_type: b.datapath_type.clone(),
                fail_mode: b.fail_mode.clone(),
                external_ids: b.external_ids.clone(),
                controllers: b
                    .controller
                    .iter()
                    .filter_map(|u| ctls.get(u))
                    .map(|c| ObservedController {
                        uuid: c.uuid.to_string(),
                        target: c.target.clone(),
                        external_ids: c.external_ids.clone(),
                    })
                    .collect(),
                ports: b
                    .ports
                    .iter()
                    .filter_map(|u| ports.get(u))
                    .map(|p| ObservedPort {
                        uuid: p.uuid.to_string(),
                        name: p.name.clone(),
                        protected: p.protected,
                        external_ids: p.external_ids.clone(),
                        interfaces: p
                            .interfaces
                            .iter()
                            .filter_map(|u| ifaces.get(u))
                            .map(observed_interface)
                            .collect(),
                    })
                    .collect(),
            });
        }
        Ok((found, elsewhere))
    }

    /// The warm path of an ADD: reads the bridge's own row and its internal Interface row
    /// by name (one transaction, two indexed lookups, whatever the number of tunnels) and
    /// returns the internal interface when [`model::warm_in_step`] says no write is needed.
    /// `None`: read everything and plan ([`Ovs::ensure`]).
    pub async fn warm(&self, spec: &BridgeSpec, tunnels: &[TunnelSpec]) -> Result<Option<Warm>> {
        let by_name = || vec![Condition::eq("name", spec.name.as_str())];
        let ops = vec![
            Operation::select(Bridge::NAME, by_name()).columns([
                "_version",
                "name",
                "datapath_type",
                "fail_mode",
                "external_ids",
            ]),
            select::<Interface>(by_name()),
        ];
        let res = self.transact(ops, "read of the bridge row").await?;
        let rows = |i: usize| res.get(i).and_then(|r| r.rows.as_deref()).unwrap_or(&[]);
        let Some(row) = rows(0).first() else {
            return Ok(None);
        };
        let text = |col: &str| row.get(col).and_then(Datum::as_str).map(str::to_owned);
        let head = BridgeHead {
            version: version_of(row).unwrap_or_default(),
            name: text("name").unwrap_or_default(),
            datapath_type: text("datapath_type").unwrap_or_default(),
            fail_mode: text("fail_mode"),
            external_ids: row
                .get("external_ids")
                .and_then(Datum::as_string_map)
                .unwrap_or_default(),
        };
        let internal = Interface::from_select(rows(1))
            .map_err(|source| OvsError::Ovsdb {
                step: "decoding rows",
                source,
            })?
            .into_iter()
            .next();
        let observed = internal.as_ref().map(observed_interface);
        if !model::warm_in_step(spec, tunnels, &head, observed.as_ref()) {
            return Ok(None);
        }
        Ok(internal.map(|internal| Warm {
            flaxd_managed: head.managed_by_flaxd(),
            internal,
        }))
    }

    /// Makes the bridge and tunnels what `spec` and `tunnels` say (see [`model::plan`]),
    /// retrying lost races, and waits until ovs-vswitchd has applied the change.
    /// Idempotent: in step, it costs one read.
    pub async fn ensure(
        &self,
        spec: &BridgeSpec,
        tunnels: &[TunnelSpec],
        prune: Option<Source>,
    ) -> Result<Ensured> {
        for _ in 0..MAX_ATTEMPTS {
            let (observed, elsewhere) = self.observe(&spec.name).await?;
            let plan = model::plan(spec, tunnels, observed.as_ref(), &elsewhere, prune)?;
            let flaxd_managed = prune == Some(Source::Flaxd)
                || observed.as_ref().is_some_and(|b| b.managed_by_flaxd());
            let digest = model::digest_to_record(spec, tunnels, observed.as_ref(), prune);
            // The plugin, on a bridge flaxd does not manage, keeps the bridge row's version
            // on the internal interface for the warm check ([`Ovs::warm`]).
            let keeps_version = prune == Some(Source::CniConfig) && !flaxd_managed;
            if plan.is_empty() && digest.is_none() {
                if keeps_version
                    && observed
                        .as_ref()
                        .is_some_and(|o| !model::version_recorded(o))
                {
                    self.record_version(&spec.name).await?;
                }
                return Ok(Ensured {
                    applied: plan,
                    flaxd_managed,
                });
            }
            let mut ops = Vec::new();
            let bridge_uuid = observed.as_ref().and_then(|b| b.uuid.parse::<Uuid>().ok());
            for (i, op) in plan.iter().enumerate() {
                translate(op, i, bridge_uuid, observed.as_ref(), &mut ops);
            }
            if let (Some(digest), Some(uuid)) = (digest, bridge_uuid) {
                ops.push(Operation::mutate(
                    Bridge::NAME,
                    vec![Condition::uuid(uuid)],
                    set_external_id(&[], DESIRED_KEY, &digest),
                ));
            }
            let next_cfg = bump_next_cfg(&mut ops);
            match self.client.transact(vswitch::DB, ops).await {
                Ok(res) => {
                    // A mutate or update of the bridge that matched nothing means the bridge
                    // went away between read and write: start over.
                    if res.iter().any(|r| r.count == Some(0)) {
                        tracing::debug!("bridge changed during the write; retrying");
                        continue;
                    }
                    let timeout = APPLY_TIMEOUT + APPLY_TIMEOUT_PER_OP * plan.len() as u32;
                    self.wait_applied_within(&next_cfg, &res, timeout).await?;
                    if keeps_version {
                        self.record_version(&spec.name).await?;
                    }
                    return Ok(Ensured {
                        applied: plan,
                        flaxd_managed,
                    });
                }
                Err(e)
                    if e.is_constraint_violation()
                        || e.is_timed_out()
                        || e.is_referential_integrity_violation() =>
                {
                    tracing::debug!(error = %e, "lost a race with another writer; retrying");
                    continue;
                }
                Err(source) => {
                    return Err(OvsError::Ovsdb {
                        step: "transaction",
                        source,
                    });
                }
            }
        }
        Err(OvsError::Contended {
            what: format!("bridge {}", spec.name),
        })
    }

    /// Writes the Bridge row's current `_version` into its internal interface's
    /// `external_ids` ([`model::BRIDGE_VERSION_KEY`]), right after a write made the bridge
    /// what the plugin wants. Two small transactions, and the second goes through only if
    /// the row still has the version read: a change in between (another writer, a hand)
    /// leaves the record stale, which only sends the next ADD to the full read.
    async fn record_version(&self, bridge: &str) -> Result<()> {
        let by_name = || vec![Condition::eq("name", bridge)];
        let res = self
            .transact(
                vec![
                    Operation::select(Bridge::NAME, by_name()).columns(["_version"]),
                    Operation::select(Interface::NAME, by_name()).columns([
                        "_uuid",
                        "type",
                        "external_ids",
                    ]),
                ],
                "read of the bridge's version",
            )
            .await?;
        let rows = |i: usize| res.get(i).and_then(|r| r.rows.as_deref()).unwrap_or(&[]);
        let (Some(version), Some(iface)) = (rows(0).first().and_then(version_of), rows(1).first())
        else {
            return Ok(());
        };
        let ids = iface
            .get("external_ids")
            .and_then(Datum::as_string_map)
            .unwrap_or_default();
        let internal = iface.get("type").and_then(Datum::as_str) == Some("internal");
        let (Some(uuid), Ok(version_uuid)) = (
            iface.uuid().filter(|_| internal && model::is_owned(&ids)),
            version.parse::<Uuid>(),
        ) else {
            return Ok(());
        };
        let ops = vec![
            Operation::wait(
                Bridge::NAME,
                by_name(),
                vec!["_version".to_owned()],
                WaitUntil::Equal,
                vec![Row::new().with("_version", Datum::uuid(version_uuid))],
            )
            .timeout_ms(0),
            Operation::mutate(
                Interface::NAME,
                vec![Condition::uuid(uuid)],
                set_external_id(&[], model::BRIDGE_VERSION_KEY, &version),
            ),
        ];
        match self.client.transact(vswitch::DB, ops).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_timed_out() => {
                tracing::debug!(bridge, "bridge changed before its version was recorded");
                Ok(())
            }
            Err(source) => Err(OvsError::Ovsdb {
                step: "record of the bridge's version",
                source,
            }),
        }
    }

    /// Makes the `Open_vSwitch` table's `ssl` row hold `spec` (for `ssl:` controllers): inserts
    /// Linen's row if there is none, updates it if it differs, and refuses (changing nothing)
    /// when a row Linen did not create is set. Returns whether it wrote; waits until
    /// ovs-vswitchd has applied a write.
    pub async fn ensure_ssl(&self, spec: &SslSpec) -> Result<bool> {
        for _ in 0..MAX_ATTEMPTS {
            let ops = vec![
                Operation::select(OpenVSwitch::NAME, vec![]).columns(["_uuid", "ssl"]),
                select::<Ssl>(vec![]),
            ];
            let res = self.transact(ops, "read of the SSL settings").await?;
            let rows = |i: usize| res.get(i).and_then(|r| r.rows.as_deref()).unwrap_or(&[]);
            let decode = |e| OvsError::Ovsdb {
                step: "decoding rows",
                source: e,
            };
            let Some(root) = rows(0).first() else {
                return Err(OvsError::NoRootRow);
            };
            let root_uuid = root.uuid().unwrap_or_else(Uuid::nil);
            let current = root
                .get("ssl")
                .and_then(Datum::as_uuids)
                .unwrap_or_default();
            let rows_by_uuid: BTreeMap<Uuid, Ssl> = Ssl::from_select(rows(1))
                .map_err(decode)?
                .into_iter()
                .map(|r| (r.uuid, r))
                .collect();
            let want = Ssl {
                private_key: spec.private_key.clone(),
                certificate: spec.certificate.clone(),
                ca_cert: spec.ca_cert.clone(),
                external_ids: SslSpec::external_ids(),
                ..Default::default()
            };
            let existing = current.first().and_then(|u| rows_by_uuid.get(u));
            if let Some(row) = existing {
                if !model::is_owned(&row.external_ids) {
                    return Err(OvsError::ForeignSsl {
                        private_key: row.private_key.clone(),
                    });
                }
                if (Ssl {
                    uuid: row.uuid,
                    ..want.clone()
                }) == *row
                {
                    return Ok(false);
                }
            }
            // The write goes through only if the root row still points where it was read.
            let mut ops = vec![
                Operation::wait(
                    OpenVSwitch::NAME,
                    vec![Condition::uuid(root_uuid)],
                    vec!["ssl".to_owned()],
                    WaitUntil::Equal,
                    vec![Row::new().with("ssl", current.as_slice())],
                )
                .timeout_ms(0),
            ];
            match existing {
                Some(row) => ops.push(Operation::update(
                    Ssl::NAME,
                    vec![Condition::uuid(row.uuid)],
                    want.to_row(),
                )),
                None => {
                    ops.push(Operation::insert(Ssl::NAME, want.to_row()).uuid_name("linen_ssl"));
                    ops.push(Operation::update(
                        OpenVSwitch::NAME,
                        vec![Condition::uuid(root_uuid)],
                        Row::new().with("ssl", Datum::named_uuid("linen_ssl")),
                    ));
                }
            }
            let next_cfg = bump_next_cfg(&mut ops);
            match self.client.transact(vswitch::DB, ops).await {
                Ok(res) => {
                    self.wait_applied(&next_cfg, &res).await?;
                    tracing::info!(key = %spec.private_key, "SSL settings written");
                    return Ok(true);
                }
                Err(e) if e.is_timed_out() || e.is_constraint_violation() => continue,
                Err(source) => {
                    return Err(OvsError::Ovsdb {
                        step: "transaction",
                        source,
                    });
                }
            }
        }
        Err(OvsError::Contended {
            what: "the SSL settings".into(),
        })
    }

    /// Asks ovs-vswitchd to reconfigure (bumps `next_cfg`) and waits until it has. Used
    /// when the database is in step but a link ovs-vswitchd should have made is missing.
    pub async fn sync(&self) -> Result<()> {
        let mut ops = Vec::new();
        let next_cfg = bump_next_cfg(&mut ops);
        let res = self.transact(ops, "bump of next_cfg").await?;
        self.wait_applied(&next_cfg, &res).await
    }

    /// Waits until ovs-vswitchd has applied the transaction whose results are `res`, in
    /// which `next_cfg` was bumped.
    async fn wait_applied(&self, next_cfg: &NextCfg, res: &[ovsdb::OpResult]) -> Result<()> {
        self.wait_applied_within(next_cfg, res, APPLY_TIMEOUT).await
    }

    async fn wait_applied_within(
        &self,
        next_cfg: &NextCfg,
        res: &[ovsdb::OpResult],
        timeout: Duration,
    ) -> Result<()> {
        let target = next_cfg.target(res).map_err(|source| OvsError::Ovsdb {
            step: "reading next_cfg",
            source,
        })?;
        self.client
            .wait_cur_cfg(target, timeout)
            .await
            .map(drop)
            .map_err(|source| OvsError::NotApplied {
                target,
                timeout,
                source,
            })
    }

    /// The Interface row named `name`, if there is one (one indexed lookup).
    pub async fn interface(&self, name: &str) -> Result<Option<Interface>> {
        let res = self
            .transact(
                vec![select::<Interface>(vec![Condition::eq("name", name)])],
                "read of an interface",
            )
            .await?;
        let rows = res.first().and_then(|r| r.rows.as_deref()).unwrap_or(&[]);
        let ifaces = Interface::from_select(rows).map_err(|e| OvsError::Ovsdb {
            step: "decoding rows",
            source: e,
        })?;
        Ok(ifaces.into_iter().next())
    }

    /// The `error` column of the interface named `name`, if ovs-vswitchd set one.
    pub async fn interface_error(&self, name: &str) -> Result<Option<String>> {
        Ok(self.interface(name).await?.and_then(|i| i.error))
    }

    /// Removes the bridge `name` (its ports and interfaces go with it) if it is Linen's,
    /// and waits until ovs-vswitchd has applied that. Returns whether there was one to
    /// remove. For an ADD that created the bridge and then could not use it: a refused
    /// ADD leaves no row behind.
    pub async fn remove_bridge(&self, name: &str) -> Result<bool> {
        let res = self
            .transact(
                vec![
                    Operation::select(Bridge::NAME, vec![Condition::eq("name", name)])
                        .columns(["_uuid", "external_ids"]),
                ],
                "read of the bridge",
            )
            .await?;
        let rows = res.first().and_then(|r| r.rows.as_deref()).unwrap_or(&[]);
        let owned = rows.iter().find_map(|row| {
            let ids = row.get("external_ids")?.as_string_map()?;
            model::is_owned(&ids).then(|| row.get("_uuid")?.as_uuid())?
        });
        let Some(uuid) = owned else {
            return Ok(false);
        };
        let mut ops = vec![Operation::mutate(
            OpenVSwitch::NAME,
            vec![],
            vec![Mutation::delete("bridges", Datum::uuid(uuid))],
        )];
        let next_cfg = bump_next_cfg(&mut ops);
        let res = self.transact(ops, "removal of the bridge").await?;
        self.wait_applied(&next_cfg, &res).await?;
        Ok(true)
    }

    /// A round trip to the server.
    pub async fn echo(&self) -> Result<()> {
        self.client.echo().await.map_err(|source| OvsError::Ovsdb {
            step: "echo",
            source,
        })
    }

    async fn transact(
        &self,
        ops: Vec<Operation>,
        step: &'static str,
    ) -> Result<Vec<ovsdb::OpResult>> {
        self.client
            .transact(vswitch::DB, ops)
            .await
            .map_err(|source| OvsError::Ovsdb { step, source })
    }
}

/// Runs `fut` (OVSDB calls of an [`Ovs`]) to completion on a single-threaded runtime made for
/// it: the way synchronous callers (the plugin, which does one thing per process; the lab)
/// use this module. A current-thread runtime starts in microseconds.
pub fn block_on<F: Future>(fut: F) -> std::io::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut))
}

/// Mutations that set `external_ids:key=value` whatever it held, and drop the keys in
/// `also_drop`; the row's other ids stay.
fn set_external_id(also_drop: &[&str], key: &str, value: &str) -> Vec<Mutation> {
    let dropped = also_drop.iter().copied().chain([key]);
    vec![
        Mutation::delete("external_ids", Datum::set(dropped)),
        Mutation::insert("external_ids", Datum::map([(key, value)])),
    ]
}

/// The model's view of an Interface row.
fn observed_interface(i: &Interface) -> ObservedInterface {
    ObservedInterface {
        uuid: i.uuid.to_string(),
        name: i.name.clone(),
        kind: i.kind.clone(),
        options: i.options.clone(),
        external_ids: i.external_ids.clone(),
    }
}

/// A row's `_version`, as text.
fn version_of(row: &Row) -> Option<String> {
    row.get("_version")
        .and_then(Datum::as_uuid)
        .map(|u| u.to_string())
}

fn select<T: Table>(conds: Vec<Condition>) -> Operation {
    Operation::select(T::NAME, conds).columns(T::COLUMNS.iter().copied().chain(["_uuid"]))
}

/// Appends the OVSDB operations for one planned change. `i` makes named-uuids unique.
fn translate(
    op: &Op,
    i: usize,
    bridge: Option<Uuid>,
    observed: Option<&ObservedBridge>,
    out: &mut Vec<Operation>,
) {
    // Every op but CreateBridge is planned against an observed bridge. Were the uuid ever
    // missing, the nil uuid matches no row: the write counts 0 rows and is retried.
    let on_bridge = || vec![Condition::uuid(bridge.unwrap_or_else(Uuid::nil))];
    match op {
        Op::CreateBridge {
            spec,
            tunnels,
            flaxd,
        } => {
            let mut ports = vec![internal_port(&spec.name, i, out)];
            for (j, t) in tunnels.iter().enumerate() {
                ports.push(tunnel_port(t, &format!("{i}_{j}"), out));
            }
            let controllers: Vec<String> = spec
                .controllers
                .iter()
                .enumerate()
                .map(|(j, target)| controller(target, i, j, out))
                .collect();
            let name = format!("br{i}");
            let mut external_ids = spec.external_ids();
            if *flaxd {
                external_ids.insert(TUNNELS_KEY.to_owned(), Source::Flaxd.as_str().to_owned());
            } else {
                external_ids.insert(DESIRED_KEY.to_owned(), model::desired_digest(spec, tunnels));
            }
            let row = Bridge {
                name: spec.name.clone(),
                fail_mode: Some(FAIL_MODE.to_owned()),
                datapath_type: spec.datapath.as_ovs().to_owned(),
                external_ids,
                ..Default::default()
            }
            .to_row()
            .with("ports", named_set(&ports))
            .with("controller", named_set(&controllers));
            out.push(Operation::insert(Bridge::NAME, row).uuid_name(&name));
            out.push(Operation::mutate(
                vswitch::OpenVSwitch::NAME,
                vec![],
                vec![Mutation::insert("bridges", Datum::named_uuid(&name))],
            ));
        }
        Op::SetFailMode { .. } => {
            out.push(Operation::update(
                Bridge::NAME,
                on_bridge(),
                Row::new().with("fail_mode", FAIL_MODE),
            ));
        }
        Op::MarkFlaxd { .. } => {
            // Replace the key's value, whatever it was; the bridge's other ids stay. The
            // plugin's record of its last write no longer describes the bridge: dropped.
            out.push(Operation::mutate(
                Bridge::NAME,
                on_bridge(),
                set_external_id(&[DESIRED_KEY], TUNNELS_KEY, Source::Flaxd.as_str()),
            ));
        }
        Op::AddInternalPort { bridge: name } => {
            let port = internal_port(name, i, out);
            out.push(add_ports(on_bridge(), &[port]));
        }
        Op::SetControllers { keep, add, .. } => {
            // Guard against a concurrent writer adding its own Controller row: the write
            // only goes through if the column still holds what was read.
            let read: Vec<Uuid> = observed
                .map(|b| {
                    b.controllers
                        .iter()
                        .filter_map(|c| c.uuid.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            out.push(
                Operation::wait(
                    Bridge::NAME,
                    on_bridge(),
                    vec!["controller".to_owned()],
                    WaitUntil::Equal,
                    vec![Row::new().with("controller", read.as_slice())],
                )
                .timeout_ms(0),
            );
            let mut set: Vec<Atom> = keep
                .iter()
                .filter_map(|u| u.parse::<Uuid>().ok())
                .map(Atom::from)
                .collect();
            for (j, target) in add.iter().enumerate() {
                set.push(Atom::named_uuid(controller(target, i, j, out)));
            }
            out.push(Operation::update(
                Bridge::NAME,
                on_bridge(),
                Row::new().with("controller", Datum::set(set)),
            ));
        }
        Op::AddTunnel { tunnel, .. } => {
            let port = tunnel_port(tunnel, &i.to_string(), out);
            out.push(add_ports(on_bridge(), &[port]));
        }
        Op::UpdateTunnel {
            port,
            interface,
            tunnel,
        } => {
            if let (Ok(p), Ok(ifc)) = (port.parse::<Uuid>(), interface.parse::<Uuid>()) {
                out.push(Operation::update(
                    Interface::NAME,
                    vec![Condition::uuid(ifc)],
                    Row::new()
                        .with("type", "vxlan")
                        .with("options", &tunnel.options())
                        .with("external_ids", &tunnel.external_ids()),
                ));
                out.push(Operation::update(
                    Port::NAME,
                    vec![Condition::uuid(p)],
                    Row::new()
                        .with("protected", tunnel.protected)
                        .with("external_ids", &tunnel.external_ids()),
                ));
            }
        }
        Op::DeleteTunnel { port, .. } => {
            if let Ok(p) = port.parse::<Uuid>() {
                // Unreferenced Port and Interface rows are garbage-collected at commit.
                out.push(Operation::mutate(
                    Bridge::NAME,
                    on_bridge(),
                    vec![Mutation::delete("ports", Datum::uuid(p))],
                ));
            }
        }
    }
}

fn add_ports(on_bridge: Vec<Condition>, ports: &[String]) -> Operation {
    Operation::mutate(
        Bridge::NAME,
        on_bridge,
        vec![Mutation::insert("ports", named_set(ports))],
    )
}

fn named_set(names: &[String]) -> Datum {
    Datum::set(names.iter().map(Atom::named_uuid))
}

fn internal_port(bridge: &str, i: usize, out: &mut Vec<Operation>) -> String {
    let ids = BridgeSpec::internal_external_ids();
    let iface = Interface {
        name: bridge.to_owned(),
        kind: "internal".into(),
        external_ids: ids.clone(),
        ..Default::default()
    };
    port_with(iface, false, ids, &format!("int{i}"), out)
}

fn tunnel_port(t: &TunnelSpec, tag: &str, out: &mut Vec<Operation>) -> String {
    let iface = Interface {
        name: t.name(),
        kind: "vxlan".into(),
        options: t.options(),
        external_ids: t.external_ids(),
        ..Default::default()
    };
    port_with(
        iface,
        t.protected,
        t.external_ids(),
        &format!("tun{tag}"),
        out,
    )
}

fn port_with(
    iface: Interface,
    protected: bool,
    ids: BTreeMap<String, String>,
    tag: &str,
    out: &mut Vec<Operation>,
) -> String {
    let (iface_name, port_name) = (format!("i{tag}"), format!("p{tag}"));
    let row = Port {
        name: iface.name.clone(),
        protected,
        external_ids: ids,
        ..Default::default()
    }
    .to_row()
    .with("interfaces", Datum::named_uuid(&iface_name));
    out.push(Operation::insert(Interface::NAME, iface.to_row()).uuid_name(&iface_name));
    out.push(Operation::insert(Port::NAME, row).uuid_name(&port_name));
    port_name
}

fn controller(target: &str, i: usize, j: usize, out: &mut Vec<Operation>) -> String {
    let name = format!("ctl{i}_{j}");
    let row = Controller {
        target: target.to_owned(),
        external_ids: BridgeSpec::controller_external_ids(),
        ..Default::default()
    }
    .to_row();
    out.push(Operation::insert(Controller::NAME, row).uuid_name(&name));
    name
}

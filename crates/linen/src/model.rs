//! The OVS data model Linen owns, in one place for every binary (the plugin and flaxd).
//!
//! What Linen creates: one Bridge (`fail_mode=standalone`, a datapath type), its internal
//! Port/Interface (same name as the bridge; that link is enslaved to the pods' Linux
//! bridge), one VXLAN Port/Interface per remote VTEP, and optionally one Controller row.
//! Every row carries [`OWNER_KEY`]=[`OWNER_VALUE`] in `external_ids`; rows without it are
//! never modified or deleted. A tunnel is identified by its remote address
//! ([`REMOTE_KEY`]), never by parsing its name, and records who manages it
//! ([`SOURCE_KEY`]): the plugin's `vtepIPs` or flaxd's membership.
//!
//! **One owner per tunnel.** Once a flaxd writes a bridge it marks it
//! ([`TUNNELS_KEY`]=`flaxd`) and from then on owns its tunnels and controllers: it adopts
//! tunnels the plugin made to members (rewriting their source) and removes Linen tunnels of
//! either source to non-members. The plugin, on a bridge so marked, writes no tunnel and no
//! controller: its `vtepIPs`/`controller` are ignored (it says so on stderr), so an ADD
//! whose configuration disagrees with flaxd cannot undo flaxd's work. On an unmarked
//! bridge (static membership, no flaxd) the plugin manages its own tunnels as before, and
//! treats any flaxd-sourced tunnel as read-only.
//!
//! [`plan`] is pure: desired state + observed rows -> the operations to apply.
//! Applying them is `crate::ovs`' job.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::config::{Datapath, TunnelKey};
use crate::naming::tunnel_port_name;

/// `external_ids` key marking a row as Linen's.
pub const OWNER_KEY: &str = "linen-owner";
/// Value of [`OWNER_KEY`].
pub const OWNER_VALUE: &str = "linen";
/// `external_ids` key naming the row's role: `bridge`, `internal`, `tunnel`, `controller`.
pub const ROLE_KEY: &str = "linen-role";
/// `external_ids` key holding a tunnel's remote VTEP address.
pub const REMOTE_KEY: &str = "linen-remote-ip";
/// `external_ids` key naming who manages a tunnel (see [`Source`]).
pub const SOURCE_KEY: &str = "linen-source";
/// `external_ids` key naming the peer node of a flaxd-managed tunnel.
pub const PEER_KEY: &str = "linen-peer";
/// Bridge `external_ids` key naming who manages the bridge's tunnels and controllers:
/// [`Source::Flaxd`] once a flaxd has written the bridge (see [`plan`]).
pub const TUNNELS_KEY: &str = "linen-tunnels";
/// Bridge `external_ids` key holding [`desired_digest`] of the tunnels and controllers the
/// plugin last made an unmarked bridge hold. A warm ADD whose configuration has the same
/// digest reads two rows by name instead of the whole bridge ([`warm_in_step`]).
pub const DESIRED_KEY: &str = "linen-desired";
/// Internal Interface `external_ids` key holding the Bridge row's `_version` (OVSDB changes
/// it on every write of the row) as it was right after the plugin's last write: any later
/// change of the row (a port removed or added by hand, a controller, the fail mode) makes
/// the warm check fail, and the ADD reads everything and repairs it.
pub const BRIDGE_VERSION_KEY: &str = "linen-bridge-version";
/// The bridge's fail mode: NORMAL switching when no controller is connected.
pub const FAIL_MODE: &str = "standalone";

/// Who manages a tunnel, and so who may remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The plugin's static `vtepIPs`.
    CniConfig,
    /// flaxd's cluster membership.
    Flaxd,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::CniConfig => "cni-config",
            Source::Flaxd => "flaxd",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cni-config" => Some(Source::CniConfig),
            "flaxd" => Some(Source::Flaxd),
            _ => None,
        }
    }
}

/// The key, certificate and CA (file paths) ovs-vswitchd uses for `ssl:` controller targets:
/// the `SSL` row the `Open_vSwitch` table's `ssl` column points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslSpec {
    pub private_key: String,
    pub certificate: String,
    pub ca_cert: String,
}

impl SslSpec {
    pub fn external_ids() -> BTreeMap<String, String> {
        owned_ids("ssl")
    }
}

/// The bridge Linen wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub datapath: Datapath,
    /// OVS controller targets, sorted and deduplicated; empty removes Linen's controller rows.
    pub controllers: Vec<String>,
}

impl BridgeSpec {
    pub fn external_ids(&self) -> BTreeMap<String, String> {
        owned_ids("bridge")
    }

    /// `external_ids` of the bridge's internal Port and Interface.
    pub fn internal_external_ids() -> BTreeMap<String, String> {
        owned_ids("internal")
    }

    pub fn controller_external_ids() -> BTreeMap<String, String> {
        owned_ids("controller")
    }
}

/// One VXLAN tunnel Linen wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    pub remote: IpAddr,
    pub key: TunnelKey,
    /// Protected ports never forward to each other: a mesh cannot loop. Only a hub leaves
    /// its tunnels unprotected, to relay between spokes.
    pub protected: bool,
    pub source: Source,
    pub peer: Option<String>,
}

impl TunnelSpec {
    /// The port (and interface) name, by the one naming rule.
    pub fn name(&self) -> String {
        tunnel_port_name(self.remote)
    }

    /// The Interface `options` column.
    pub fn options(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("remote_ip".to_owned(), self.remote.to_string()),
            ("key".to_owned(), self.key.as_ovs()),
        ])
    }

    /// The Port and Interface `external_ids` column.
    pub fn external_ids(&self) -> BTreeMap<String, String> {
        let mut ids = owned_ids("tunnel");
        ids.insert(REMOTE_KEY.to_owned(), self.remote.to_string());
        ids.insert(SOURCE_KEY.to_owned(), self.source.as_str().to_owned());
        if let Some(peer) = &self.peer {
            ids.insert(PEER_KEY.to_owned(), peer.clone());
        }
        ids
    }
}

fn owned_ids(role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (OWNER_KEY.to_owned(), OWNER_VALUE.to_owned()),
        (ROLE_KEY.to_owned(), role.to_owned()),
    ])
}

/// Whether a row's `external_ids` mark it as Linen's.
pub fn is_owned(external_ids: &BTreeMap<String, String>) -> bool {
    external_ids.get(OWNER_KEY).map(String::as_str) == Some(OWNER_VALUE)
}

/// A Bridge row as read from OVSDB, with the rows it references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedBridge {
    pub uuid: String,
    /// The row's `_version`.
    pub version: String,
    pub name: String,
    pub datapath_type: String,
    pub fail_mode: Option<String>,
    pub external_ids: BTreeMap<String, String>,
    pub controllers: Vec<ObservedController>,
    pub ports: Vec<ObservedPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedController {
    pub uuid: String,
    pub target: String,
    pub external_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPort {
    pub uuid: String,
    pub name: String,
    pub protected: bool,
    pub external_ids: BTreeMap<String, String>,
    pub interfaces: Vec<ObservedInterface>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedInterface {
    pub uuid: String,
    pub name: String,
    pub kind: String,
    pub options: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl ObservedPort {
    /// The remote address of a Linen tunnel port, from its `external_ids`.
    pub fn tunnel_remote(&self) -> Option<IpAddr> {
        if !is_owned(&self.external_ids) {
            return None;
        }
        self.external_ids.get(REMOTE_KEY)?.parse().ok()
    }

    pub fn source(&self) -> Option<Source> {
        self.external_ids
            .get(SOURCE_KEY)
            .and_then(|s| Source::parse(s))
    }
}

impl ObservedBridge {
    /// Whether a flaxd owns this bridge's tunnels and controllers ([`TUNNELS_KEY`]).
    pub fn managed_by_flaxd(&self) -> bool {
        self.external_ids.get(TUNNELS_KEY).map(String::as_str) == Some(Source::Flaxd.as_str())
    }

    /// Linen's tunnel ports on this bridge, by remote address.
    pub fn owned_tunnels(&self) -> BTreeMap<IpAddr, &ObservedPort> {
        self.ports
            .iter()
            .filter_map(|p| p.tunnel_remote().map(|r| (r, p)))
            .collect()
    }
}

/// The Bridge row's own columns, without the rows it references: what a warm ADD reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeHead {
    /// The row's `_version`.
    pub version: String,
    pub name: String,
    pub datapath_type: String,
    pub fail_mode: Option<String>,
    pub external_ids: BTreeMap<String, String>,
}

impl BridgeHead {
    pub fn managed_by_flaxd(&self) -> bool {
        self.external_ids.get(TUNNELS_KEY).map(String::as_str) == Some(Source::Flaxd.as_str())
    }
}

/// A digest of everything the plugin writes for `spec` + `tunnels` on an unmarked bridge:
/// datapath, controllers, and each tunnel's name, options, protection and `external_ids`.
/// Equal digests mean equal writes; the text hashed is versioned (`v1`) so a change of what
/// it covers changes every digest (one full read per node after an upgrade).
pub fn desired_digest(spec: &BridgeSpec, tunnels: &[TunnelSpec]) -> String {
    use std::fmt::Write;
    let mut text = format!("v1\n{}\n{}\n", spec.name, spec.datapath.as_ovs());
    let controllers: BTreeSet<&str> = spec.controllers.iter().map(String::as_str).collect();
    for c in controllers {
        let _ = writeln!(text, "c {c}");
    }
    let mut tunnels: Vec<&TunnelSpec> = tunnels.iter().collect();
    tunnels.sort_by_key(|t| t.remote);
    tunnels.dedup_by_key(|t| t.remote);
    for t in tunnels {
        let _ = write!(text, "t {} {}", t.name(), t.protected);
        for (k, v) in t.options().iter().chain(t.external_ids().iter()) {
            let _ = write!(text, " {k}={v}");
        }
        text.push('\n');
    }
    format!("{:016x}", crate::naming::fnv1a64(text.as_bytes()))
}

/// Whether the bridge needs no write for the plugin, judged from its own row and its
/// internal Interface row alone (two indexed reads, whatever the number of tunnels): the
/// bridge is Linen's, with the wanted datapath and fail mode, its internal interface is
/// Linen's, and either flaxd manages the tunnels and controllers (the plugin writes none)
/// or the last plugin write recorded this very configuration ([`DESIRED_KEY`]). `false`
/// means "read everything and plan", never "something is wrong".
///
/// On an unmarked bridge the internal interface must also record the bridge row's current
/// `_version` ([`BRIDGE_VERSION_KEY`]): a port or controller removed or added since the
/// last plugin write changed the row, so the ADD reads everything and repairs it. What it
/// cannot see: a change made by hand inside one tunnel's own Port or Interface row (its
/// options, its protection), which leaves the Bridge row alone. CHECK, which reads
/// everything, reports that; flaxd repairs its own bridges.
pub fn warm_in_step(
    spec: &BridgeSpec,
    tunnels: &[TunnelSpec],
    head: &BridgeHead,
    internal: Option<&ObservedInterface>,
) -> bool {
    let dp = if head.datapath_type.is_empty() {
        "system"
    } else {
        head.datapath_type.as_str()
    };
    let internal_ok = internal
        .is_some_and(|i| i.name == spec.name && i.kind == "internal" && is_owned(&i.external_ids));
    let recorded = || {
        !head.version.is_empty()
            && internal.and_then(|i| i.external_ids.get(BRIDGE_VERSION_KEY)) == Some(&head.version)
            && head.external_ids.get(DESIRED_KEY) == Some(&desired_digest(spec, tunnels))
    };
    is_owned(&head.external_ids)
        && head.name == spec.name
        && dp == spec.datapath.as_ovs()
        && head.fail_mode.as_deref() == Some(FAIL_MODE)
        && internal_ok
        && (head.managed_by_flaxd() || recorded())
}

/// Whether the bridge's internal interface records the bridge row's current `_version`
/// ([`BRIDGE_VERSION_KEY`]). Only the plugin, on a bridge flaxd does not manage, keeps it.
pub fn version_recorded(observed: &ObservedBridge) -> bool {
    observed
        .ports
        .iter()
        .filter(|p| p.name == observed.name)
        .flat_map(|p| &p.interfaces)
        .any(|i| {
            !observed.version.is_empty()
                && i.external_ids.get(BRIDGE_VERSION_KEY) == Some(&observed.version)
        })
}

/// The [`desired_digest`] to record on the observed bridge with this write ([`DESIRED_KEY`]),
/// or `None` when it is recorded already or is not the writer's to record: only the plugin
/// records one, and only on a bridge flaxd does not manage. Written with the changes it
/// describes, or alone when the rows are in step but the record is missing or another
/// configuration's, so the next warm ADD with this configuration reads two rows. (A bridge
/// the plugin creates gets it in its insert.)
pub fn digest_to_record(
    spec: &BridgeSpec,
    tunnels: &[TunnelSpec],
    observed: Option<&ObservedBridge>,
    writer: Option<Source>,
) -> Option<String> {
    let obs = observed?;
    if writer != Some(Source::CniConfig) || obs.managed_by_flaxd() || !is_owned(&obs.external_ids) {
        return None;
    }
    let digest = desired_digest(spec, tunnels);
    (obs.external_ids.get(DESIRED_KEY) != Some(&digest)).then_some(digest)
}

/// One change to apply. Uuids are those of the observed rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert the bridge with its internal port, the tunnels and the controller.
    CreateBridge {
        spec: BridgeSpec,
        tunnels: Vec<TunnelSpec>,
        /// flaxd is creating it: mark it as flaxd's ([`TUNNELS_KEY`]).
        flaxd: bool,
    },
    /// Mark the bridge's tunnels and controllers as flaxd's ([`TUNNELS_KEY`]).
    MarkFlaxd {
        bridge: String,
    },
    /// Set the bridge's fail mode to standalone.
    SetFailMode {
        bridge: String,
    },
    /// Re-add the bridge's internal port, which someone removed.
    AddInternalPort {
        bridge: String,
    },
    /// Replace Linen's controller rows: keep `keep` (rows Linen does not own), add `add`.
    SetControllers {
        bridge: String,
        keep: Vec<String>,
        add: Vec<String>,
    },
    AddTunnel {
        bridge: String,
        tunnel: TunnelSpec,
    },
    /// Rewrite a tunnel's options and protection in place.
    UpdateTunnel {
        port: String,
        interface: String,
        tunnel: TunnelSpec,
    },
    DeleteTunnel {
        bridge: String,
        port: String,
        name: String,
        remote: IpAddr,
    },
}

/// Why the observed state cannot be made what Linen wants without touching others' rows.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "OVS bridge {bridge} exists but was not created by Linen (no {OWNER_KEY}={OWNER_VALUE} in external_ids); refusing to modify it"
    )]
    BridgeNotOwned { bridge: String },
    #[error(
        "OVS bridge {bridge} has datapath_type {have:?} but the configuration asks for {want:?}"
    )]
    DatapathMismatch {
        bridge: String,
        have: String,
        want: &'static str,
    },
    #[error(
        "cannot create OVS bridge {bridge}: a port of that name already exists on bridge {holder} (pick another ovsBridge)"
    )]
    BridgeNameTaken { bridge: String, holder: String },
    #[error(
        "cannot add the tunnel to {remote}: an OVS port named {name} already exists ({holder})"
    )]
    NameTaken {
        name: String,
        remote: IpAddr,
        holder: String,
    },
}

/// What the caller knows about ports outside the bridge: name -> owning bridge's name.
pub type PortsElsewhere = BTreeMap<String, String>;

/// Computes the operations that take `observed` to `spec` + `tunnels`, for `writer`: the
/// plugin (`Some(CniConfig)`), flaxd (`Some(Flaxd)`), or a reader comparing (`None`: the
/// plugin's view, without removals).
///
/// Tunnels are matched by remote address. Rows Linen does not own are never changed: a
/// conflict is an error. Ownership between the plugin and flaxd is the module doc's rule:
/// flaxd adopts and prunes every Linen tunnel on a bridge it marks; the plugin leaves a
/// marked bridge's tunnels and controllers alone, never rewrites or removes a
/// flaxd-sourced tunnel, and prunes only its own.
pub fn plan(
    spec: &BridgeSpec,
    tunnels: &[TunnelSpec],
    observed: Option<&ObservedBridge>,
    elsewhere: &PortsElsewhere,
    writer: Option<Source>,
) -> Result<Vec<Op>, PlanError> {
    let flaxd = writer == Some(Source::Flaxd);
    let Some(obs) = observed else {
        // The bridge's internal port would share its name with that port: OVS would never
        // create it, and waiting would not help.
        if let Some(holder) = elsewhere.get(&spec.name) {
            return Err(PlanError::BridgeNameTaken {
                bridge: spec.name.clone(),
                holder: holder.clone(),
            });
        }
        for t in tunnels {
            check_free(&t.name(), t.remote, None, elsewhere)?;
        }
        return Ok(vec![Op::CreateBridge {
            spec: spec.clone(),
            tunnels: tunnels.to_vec(),
            flaxd,
        }]);
    };
    if !is_owned(&obs.external_ids) {
        return Err(PlanError::BridgeNotOwned {
            bridge: obs.name.clone(),
        });
    }
    let want_dp = spec.datapath.as_ovs();
    // An empty datapath_type means "system" to ovs-vswitchd.
    let have_dp = if obs.datapath_type.is_empty() {
        "system"
    } else {
        obs.datapath_type.as_str()
    };
    if have_dp != want_dp {
        return Err(PlanError::DatapathMismatch {
            bridge: obs.name.clone(),
            have: obs.datapath_type.clone(),
            want: want_dp,
        });
    }

    let mut ops = Vec::new();
    let bridge = obs.name.clone();
    if obs.fail_mode.as_deref() != Some(FAIL_MODE) {
        ops.push(Op::SetFailMode {
            bridge: bridge.clone(),
        });
    }
    if !obs.ports.iter().any(|p| p.name == obs.name) {
        ops.push(Op::AddInternalPort {
            bridge: bridge.clone(),
        });
    }
    if obs.managed_by_flaxd() && !flaxd {
        // flaxd's tunnels and controllers: the plugin writes none of them.
        return Ok(ops);
    }
    if flaxd && !obs.managed_by_flaxd() {
        ops.push(Op::MarkFlaxd {
            bridge: bridge.clone(),
        });
    }

    let (owned_ctl, foreign_ctl): (Vec<_>, Vec<_>) = obs
        .controllers
        .iter()
        .partition(|c| is_owned(&c.external_ids));
    let mut have: Vec<&str> = owned_ctl.iter().map(|c| c.target.as_str()).collect();
    have.sort_unstable();
    let mut want: Vec<&str> = spec.controllers.iter().map(String::as_str).collect();
    want.sort_unstable();
    want.dedup();
    if have != want {
        ops.push(Op::SetControllers {
            bridge: bridge.clone(),
            keep: foreign_ctl.iter().map(|c| c.uuid.clone()).collect(),
            add: want.into_iter().map(str::to_owned).collect(),
        });
    }

    let existing = obs.owned_tunnels();
    let wanted: BTreeSet<IpAddr> = tunnels.iter().map(|t| t.remote).collect();
    // What this writer may rewrite or remove: flaxd every Linen tunnel, the plugin its own.
    let writable = |port: &ObservedPort| flaxd || port.source() != Some(Source::Flaxd);
    for t in tunnels {
        let name = t.name();
        match existing.get(&t.remote) {
            Some(port) if !writable(port) => {}
            Some(port) if port.name == name => {
                let iface = port.interfaces.iter().find(|i| i.name == name);
                let in_step = iface.is_some_and(|i| i.kind == "vxlan" && i.options == t.options())
                    && port.protected == t.protected
                    && port.source() == Some(t.source);
                match iface {
                    Some(i) if !in_step => ops.push(Op::UpdateTunnel {
                        port: port.uuid.clone(),
                        interface: i.uuid.clone(),
                        tunnel: t.clone(),
                    }),
                    Some(_) => {}
                    None => {
                        // A port without its interface cannot carry traffic: rebuild it.
                        ops.push(delete_op(&bridge, port, t.remote));
                        ops.push(Op::AddTunnel {
                            bridge: bridge.clone(),
                            tunnel: t.clone(),
                        });
                    }
                }
            }
            Some(port) => {
                // Ours, under an older name: rename by delete + add in one transaction.
                ops.push(delete_op(&bridge, port, t.remote));
                check_free(&name, t.remote, Some(obs), elsewhere)?;
                ops.push(Op::AddTunnel {
                    bridge: bridge.clone(),
                    tunnel: t.clone(),
                });
            }
            None => {
                check_free(&name, t.remote, Some(obs), elsewhere)?;
                ops.push(Op::AddTunnel {
                    bridge: bridge.clone(),
                    tunnel: t.clone(),
                });
            }
        }
    }
    if writer.is_some() {
        for (remote, port) in &existing {
            let prunable = flaxd || port.source() == Some(Source::CniConfig);
            if !wanted.contains(remote) && prunable {
                ops.push(delete_op(&bridge, port, *remote));
            }
        }
    }
    Ok(ops)
}

fn delete_op(bridge: &str, port: &ObservedPort, remote: IpAddr) -> Op {
    Op::DeleteTunnel {
        bridge: bridge.to_owned(),
        port: port.uuid.clone(),
        name: port.name.clone(),
        remote,
    }
}

fn check_free(
    name: &str,
    remote: IpAddr,
    obs: Option<&ObservedBridge>,
    elsewhere: &PortsElsewhere,
) -> Result<(), PlanError> {
    let taken = |holder: String| PlanError::NameTaken {
        name: name.to_owned(),
        remote,
        holder,
    };
    if let Some(port) = obs.and_then(|o| o.ports.iter().find(|p| p.name == name)) {
        return Err(taken(match port.tunnel_remote() {
            Some(other) => format!("Linen's tunnel to {other}"),
            None => format!(
                "a port of bridge {} not created by Linen",
                obs.map_or("", |o| &o.name)
            ),
        }));
    }
    if let Some(bridge) = elsewhere.get(name) {
        return Err(taken(format!("a port of bridge {bridge}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

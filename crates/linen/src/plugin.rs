//! The plugin's verbs. ADD ensures the shared overlay (bridge, internal port, tunnels,
//! controller) in one OVSDB transaction, attaches the internal port to the pods' Linux
//! bridge and fits the pod's MTU to the tunnel; CHECK verifies all of that; DEL, STATUS
//! and GC are described on their functions.

use std::net::IpAddr;
use std::path::Path;

use cni::plugin::{CmdArgs, Plugin};
use cni::{Attachment, NetConf, types};

use crate::config::LinenConfig;
use crate::error::{Error, Result, Verb};
use crate::link::{Link, LinkError, Netlink, PodSocket};
use crate::model::{self, BridgeSpec, Source, TunnelSpec};
use crate::mtu;
use crate::ovs::{Ensured, Ovs};

/// The `linen` plugin.
#[derive(Debug, Default)]
pub struct Linen;

impl Plugin for Linen {
    fn add(&self, args: &CmdArgs) -> Result<types::Result, cni::Error> {
        // Input first: a bad configuration is refused before anything is touched.
        config_and_prev(args)
            .and_then(|(cfg, prev)| Ok((cfg, prev, pod_socket(args)?)))
            .and_then(|(cfg, prev, pod)| block_on(add(args, cfg, prev, pod)))
            .map_err(|e| e.to_cni(Verb::Add))
    }

    /// The bridge, its internal port and the tunnels are shared by every pod on the node
    /// and outlive any one of them, and the pod's veth (whose MTU ADD may have lowered) is
    /// removed by the bridge plugin. Linen's only per-attachment state is the hostPorts the
    /// pod holds ([`crate::hostport`]): DEL gives them back. It succeeds with OVS down or
    /// everything already gone.
    fn del(&self, args: &CmdArgs) -> Result<(), cni::Error> {
        LinenConfig::from_json(&args.conf.raw)
            .map_err(Error::from)
            .and_then(|cfg| {
                crate::hostport::release(&cfg.host_port_dir, &args.container_id)
                    .map(drop)
                    .map_err(Error::from)
            })
            .map_err(|e| e.to_cni(Verb::Del))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), cni::Error> {
        config_and_prev(args)
            .and_then(|(cfg, prev)| Ok((cfg, prev, pod_socket(args)?)))
            .and_then(|(cfg, prev, pod)| block_on(check(args, cfg, prev, pod)))
            .map_err(|e| e.to_cni(Verb::Check))
    }

    /// Ready when OVSDB answers.
    fn status(&self, conf: &NetConf) -> Result<(), cni::Error> {
        block_on(async {
            let cfg = LinenConfig::from_json(&conf.raw)?;
            Ovs::connect(&cfg.ovsdb).await?.echo().await?;
            Ok(())
        })
        .map_err(|e| e.to_cni(Verb::Status))
    }

    /// Gives back the hostPorts of attachments that are no longer valid; the shared
    /// overlay must survive any set of valid attachments, including none.
    fn gc(&self, conf: &NetConf, valid: &[Attachment]) -> Result<(), cni::Error> {
        LinenConfig::from_json(&conf.raw)
            .map_err(Error::from)
            .and_then(|cfg| {
                crate::hostport::release_where(&cfg.host_port_dir, |holder| {
                    !valid.iter().any(|a| a.container_id == holder)
                })
                .map(drop)
                .map_err(Error::from)
            })
            .map_err(|e| e.to_cni(Verb::Gc))
    }
}

/// Opens the netlink socket into the pod's namespace, before any runtime exists (see
/// [`PodSocket::open`]). A namespace that cannot be entered is a container that is gone.
fn pod_socket(args: &CmdArgs) -> Result<PodSocket> {
    let netns = args.netns.as_deref().unwrap_or(Path::new(""));
    PodSocket::open(netns).map_err(|e| match e {
        LinkError::Netns { path, reason } => Error::PodNetns {
            netns: path.display().to_string(),
            reason,
        },
        LinkError::NotANetns { path, why } => Error::NotANetns {
            netns: path.display().to_string(),
            why,
        },
        other => Error::Link(other),
    })
}

/// Runs one verb on a single-threaded runtime ([`crate::ovs::block_on`]).
fn block_on<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    crate::ovs::block_on(fut).map_err(Error::Runtime)?
}

/// What ADD and CHECK both work out from the configuration and the node.
struct Prepared {
    cfg: LinenConfig,
    bridge: BridgeSpec,
    tunnels: Vec<TunnelSpec>,
    /// The largest pod MTU the tunnels can carry, when the underlay MTU is known.
    max_mtu: Option<u32>,
    underlay_mtu: Option<u32>,
}

async fn prepare(cfg: LinenConfig, nl: &Netlink) -> Result<Prepared> {
    // One list of VTEPs can serve every node of a mesh: skip this node's own addresses.
    let local = nl.local_addresses().await?;
    let tunnels = cfg.tunnels(&local);
    let remotes: Vec<IpAddr> = tunnels.iter().map(|t| t.remote).collect();
    let underlay_mtu = match cfg.underlay_mtu {
        Some(m) => Some(m),
        None => match remotes.first() {
            Some(r) => nl.path_mtu(*r).await?,
            None => None,
        },
    };
    let max_mtu = match underlay_mtu {
        Some(u) => Some(
            mtu::max_pod_mtu(u, mtu::vxlan_overhead(&remotes))
                .ok_or(Error::UnderlayTooSmall { underlay: u })?,
        ),
        None => None,
    };
    if let (Some(want), Some(max), Some(underlay)) = (cfg.mtu, max_mtu, underlay_mtu)
        && want > max
    {
        return Err(Error::MtuTooLarge {
            mtu: want,
            max,
            underlay,
        });
    }
    let bridge = cfg.bridge_spec();
    Ok(Prepared {
        cfg,
        bridge,
        tunnels,
        max_mtu,
        underlay_mtu,
    })
}

/// The pod's interfaces as prevResult and the kernel describe them.
struct Attached {
    linux_bridge: Link,
    /// Index in `prevResult.interfaces` of the Linux bridge.
    bridge_index: usize,
    /// Index in `prevResult.interfaces` and the link of the host end of the pod's veth.
    host_veth: Option<(usize, Link)>,
    /// Index in `prevResult.interfaces` of the container end.
    pod_index: usize,
}

async fn attached(prev: &types::Result, ifname: &str, nl: &Netlink) -> Result<Attached> {
    let mut linux_bridge = None;
    let mut host_links = Vec::new();
    for (i, iface) in prev.interfaces.iter().enumerate() {
        if iface.sandbox.as_deref().is_some_and(|s| !s.is_empty()) {
            continue;
        }
        // prevResult is input: a name the kernel could not have given is refused here, not
        // passed to netlink (a 70,000-byte name once panicked inside the netlink crate).
        if !crate::naming::is_valid_ifname(&iface.name) {
            return Err(Error::BadPrevResultName {
                index: i,
                name: iface.name.chars().take(64).collect(),
            });
        }
        // The link kind decides, not the position in the list.
        if let Some(link) = nl.link_by_name(&iface.name).await? {
            if link.is_bridge() && linux_bridge.is_none() {
                linux_bridge = Some((i, link));
            } else {
                host_links.push((i, link));
            }
        }
    }
    let (bridge_index, linux_bridge) = linux_bridge.ok_or_else(|| Error::NoLinuxBridge {
        names: prev
            .interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        .ok_or_else(|| Error::NoPodInterface {
            ifname: ifname.to_owned(),
        })?;
    let host_veth = host_links
        .into_iter()
        .find(|(_, l)| l.master == Some(linux_bridge.index));
    Ok(Attached {
        linux_bridge,
        bridge_index,
        host_veth,
        pod_index,
    })
}

fn config_and_prev(args: &CmdArgs) -> Result<(LinenConfig, &types::Result)> {
    let cfg = LinenConfig::from_json(&args.conf.raw)?;
    let prev = args.conf.prev_result.as_ref().ok_or(Error::NotChained)?;
    Ok((cfg, prev))
}

async fn add(
    args: &CmdArgs,
    cfg: LinenConfig,
    prev: &types::Result,
    pod: PodSocket,
) -> Result<types::Result> {
    // A hostPort another pod holds: refused before anything else is touched. The ports
    // taken here are given back by the runtime's DEL if a later step fails.
    crate::hostport::reserve(&cfg.host_port_dir, &args.container_id, &cfg.host_ports)?;
    let nl = Netlink::connect()?;
    let att = attached(prev, &args.ifname, &nl).await?;
    let plan = prepare(cfg, &nl).await?;

    let ovs = Ovs::connect(&plan.cfg.ovsdb).await?;
    // Before any write: a link already named like the bridge must be that bridge's own
    // internal port, never a link of someone else's that ADD would then enslave.
    let before = nl.link_by_name(&plan.bridge.name).await?;
    // The warm path: two rows read by name say nothing needs writing (and hand over the
    // internal Interface row the link check needs); otherwise read everything and plan.
    let ensured = match ovs.warm(&plan.bridge, &plan.tunnels).await? {
        Some(warm) => {
            tracing::debug!(bridge = %plan.bridge.name, "warm: the bridge is as this configuration wants it (two rows read)");
            if let Some(link) = &before {
                verify_internal(&ovs, &plan.bridge.name, link, Some(warm.internal)).await?;
            }
            Ensured {
                applied: Vec::new(),
                flaxd_managed: warm.flaxd_managed,
            }
        }
        None => {
            tracing::debug!(bridge = %plan.bridge.name, "full read: the bridge may differ from this configuration");
            if let Some(link) = &before {
                verify_internal(&ovs, &plan.bridge.name, link, None).await?;
            }
            ovs.ensure(&plan.bridge, &plan.tunnels, Some(Source::CniConfig))
                .await?
        }
    };
    if !ensured.applied.is_empty() {
        tracing::info!(bridge = %plan.bridge.name, changes = ensured.applied.len(), "overlay updated");
    }
    if ensured.flaxd_managed && (!plan.tunnels.is_empty() || !plan.bridge.controllers.is_empty()) {
        tracing::warn!(
            bridge = %plan.bridge.name,
            "flaxd manages this bridge's tunnels and controllers: the configuration's vtepIPs and controller are ignored"
        );
    }

    let internal = match before {
        Some(link) => link,
        None => {
            // Created by this ADD (or by ovs-vswitchd just now): check it like the above,
            // and if this ADD made the bridge and cannot use it, take the bridge away again.
            let created = ensured
                .applied
                .iter()
                .any(|op| matches!(op, model::Op::CreateBridge { .. }));
            let found = match internal_link(&plan.bridge.name, &ovs, &nl).await {
                Ok(link) => verify_internal(&ovs, &plan.bridge.name, &link, None)
                    .await
                    .map(|()| link),
                Err(e) => Err(e),
            };
            match found {
                Ok(link) => link,
                Err(e) => {
                    if created && let Err(undo) = ovs.remove_bridge(&plan.bridge.name).await {
                        tracing::warn!(bridge = %plan.bridge.name, error = %undo, "cannot remove the bridge this ADD created");
                    }
                    return Err(e);
                }
            }
        }
    };
    match internal.master {
        Some(m) if m == att.linux_bridge.index => {}
        Some(other) => {
            let other = nl
                .link_by_index(other)
                .await?
                .map_or_else(|| format!("#{other}"), |l| l.name);
            return Err(Error::AttachedElsewhere {
                bridge: internal.name.clone(),
                other,
                wanted: att.linux_bridge.name.clone(),
            });
        }
        None => {}
    }
    if internal.master != Some(att.linux_bridge.index) || !internal.up {
        nl.enslave_and_up(&internal, &att.linux_bridge).await?;
    }

    // The pod's MTU: exactly the configured one, or lowered to what the tunnel carries.
    let (pod_nl, pod_link) = pod_link(args, pod).await?;
    let target = match (plan.cfg.mtu, plan.max_mtu) {
        (Some(want), _) => Some(want),
        (None, Some(max)) if pod_link.mtu > max => Some(max),
        _ => None,
    };
    let mut result = prev.clone();
    // The Linux bridge's MAC as it is now. The reference bridge plugin records the bridge's
    // MAC before it pins it, so when several first ADDs on a node race, another pod's veth
    // can change it in between and the bridge plugin's own CHECK then fails with "Mac
    // doesn't match" (reproduced with the bridge plugin alone: 32 concurrent ADDs, no
    // Linen). The bridge is pinned by now, so the address read here is the one CHECK sees.
    if att.linux_bridge.mac.is_some() {
        result.interfaces[att.bridge_index].mac = att.linux_bridge.mac.clone();
    }
    if let Some(mtu) = target {
        // If this fails half-way the runtime's DEL removes the veth pair; nothing else
        // per-pod was changed.
        if pod_link.mtu != mtu {
            pod_nl.set_mtu(&pod_link, mtu).await?;
        }
        result.interfaces[att.pod_index].mtu = Some(mtu);
        if let Some((i, veth)) = &att.host_veth {
            if veth.mtu != mtu {
                nl.set_mtu(veth, mtu).await?;
            }
            result.interfaces[*i].mtu = Some(mtu);
        }
    }
    Ok(result)
}

/// A connection into the pod's namespace and its CNI_IFNAME link there.
async fn pod_link(args: &CmdArgs, pod: PodSocket) -> Result<(Netlink, Link)> {
    let nl = Netlink::connect_in(pod)?;
    let link = nl
        .link_by_name(&args.ifname)
        .await?
        .ok_or_else(|| Error::PodLinkMissing {
            ifname: args.ifname.clone(),
            netns: args
                .netns
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
                .to_string(),
        })?;
    Ok((nl, link))
}

/// Whether `link` is the internal port of Linen's bridge `bridge`: OVS has Linen's internal
/// Interface row of that name and reports `link`'s ifindex for it. Anything else is a link
/// Linen did not create (a veth, a Linux bridge, another switch's port) and is refused.
/// `read`: the Interface row, when the caller has just read it.
async fn verify_internal(
    ovs: &Ovs,
    bridge: &str,
    link: &Link,
    read: Option<ovsdb::vswitch::Interface>,
) -> Result<()> {
    let mut row = match read {
        Some(row) => Some(row),
        None => ovs.interface(bridge).await?,
    };
    // `ifindex` is an ephemeral column: after an ovsdb-server restart it is empty until
    // ovs-vswitchd reports it again. Unknown is not a mismatch: ask ovs-vswitchd to
    // reconfigure (waiting until it has), read again, and if it is still unknown say
    // "try again later" rather than refuse the link for good.
    let unknown = |r: &Option<ovsdb::vswitch::Interface>| {
        r.as_ref().is_some_and(|i| {
            model::is_owned(&i.external_ids)
                && i.kind == "internal"
                && i.ifindex.is_none_or(|x| x <= 0)
        })
    };
    if unknown(&row) {
        ovs.sync().await?;
        row = ovs.interface(bridge).await?;
        if unknown(&row) {
            return Err(Error::IfindexUnknown {
                bridge: bridge.to_owned(),
            });
        }
    }
    let ours = row.as_ref().is_some_and(|i| {
        model::is_owned(&i.external_ids)
            && i.kind == "internal"
            && i.ifindex == Some(i64::from(link.index))
    });
    if ours {
        return Ok(());
    }
    Err(Error::LinkNotOurs {
        name: link.name.clone(),
        index: link.index,
        why: match row {
            None => "OVS has no interface of that name".into(),
            Some(i) if !model::is_owned(&i.external_ids) => {
                "its OVS interface was not created by Linen".into()
            }
            Some(i) => format!(
                "OVS's interface {} (type {:?}) has ifindex {}{}",
                i.name,
                i.kind,
                i.ifindex.map_or("none".into(), |x| x.to_string()),
                i.error.map(|e| format!(", error: {e}")).unwrap_or_default()
            ),
        },
    })
}

/// The bridge's internal link. When the database is in step but the link is missing
/// (ovs-vswitchd restarted, or is still catching up), ask it to reconfigure once and look
/// again; then report why it is missing.
async fn internal_link(bridge: &str, ovs: &Ovs, nl: &Netlink) -> Result<Link> {
    if let Some(link) = nl.link_by_name(bridge).await? {
        return Ok(link);
    }
    ovs.sync().await?;
    if let Some(link) = nl.link_by_name(bridge).await? {
        return Ok(link);
    }
    let why = ovs.interface_error(bridge).await?.or_else(|| {
        Some("no error reported; is datapathType right for this host (netdev without the OVS kernel module)?".into())
    });
    Err(Error::NoInternalPort {
        bridge: bridge.to_owned(),
        why,
    })
}

async fn check(
    args: &CmdArgs,
    cfg: LinenConfig,
    prev: &types::Result,
    pod: PodSocket,
) -> Result<()> {
    let nl = Netlink::connect()?;
    let att = attached(prev, &args.ifname, &nl).await?;
    let plan = prepare(cfg, &nl).await?;

    let ovs = Ovs::connect(&plan.cfg.ovsdb).await?;
    let (observed, elsewhere) = ovs.observe(&plan.bridge.name).await?;
    let drift = model::plan(
        &plan.bridge,
        &plan.tunnels,
        observed.as_ref(),
        &elsewhere,
        None,
    )
    .map_err(|e| Error::Check(e.to_string()))?;
    if !drift.is_empty() {
        let what: Vec<String> = drift.iter().map(describe).collect();
        return Err(Error::Check(format!(
            "OVS bridge {} is not as configured: {}",
            plan.bridge.name,
            what.join("; ")
        )));
    }
    let flaxd_managed = observed.as_ref().is_some_and(|b| b.managed_by_flaxd());
    for t in plan.tunnels.iter().filter(|_| !flaxd_managed) {
        if let Some(err) = ovs.interface_error(&t.name()).await? {
            return Err(Error::Check(format!(
                "tunnel {} to {}: ovs-vswitchd reports: {err}",
                t.name(),
                t.remote
            )));
        }
    }

    let internal = nl.link_by_name(&plan.bridge.name).await?.ok_or_else(|| {
        Error::Check(format!(
            "internal port {} has no link on this host",
            plan.bridge.name
        ))
    })?;
    if internal.master != Some(att.linux_bridge.index) {
        return Err(Error::Check(format!(
            "internal port {} is not a port of Linux bridge {}",
            internal.name, att.linux_bridge.name
        )));
    }
    if !internal.up {
        return Err(Error::Check(format!(
            "internal port {} is down",
            internal.name
        )));
    }

    let (_, pod_link) = pod_link(args, pod).await?;
    if let Some(want) = plan.cfg.mtu
        && pod_link.mtu != want
    {
        return Err(Error::Check(format!(
            "pod interface {} has MTU {}, configured {want}",
            args.ifname, pod_link.mtu
        )));
    }
    if let (Some(max), Some(underlay)) = (plan.max_mtu, plan.underlay_mtu)
        && pod_link.mtu > max
    {
        return Err(Error::Check(format!(
            "pod interface {} has MTU {} but the tunnel carries at most {max} (underlay MTU {underlay})",
            args.ifname, pod_link.mtu
        )));
    }
    Ok(())
}

fn describe(op: &model::Op) -> String {
    use model::Op;
    match op {
        Op::CreateBridge { spec, .. } => format!("bridge {} is missing", spec.name),
        Op::SetFailMode { .. } => format!("fail_mode is not {}", model::FAIL_MODE),
        Op::MarkFlaxd { .. } => "the bridge is not marked as flaxd's".into(),
        Op::AddInternalPort { bridge } => format!("internal port {bridge} is missing"),
        Op::SetControllers { add, .. } if add.is_empty() => {
            "a controller is set but none is configured".into()
        }
        Op::SetControllers { add, .. } => format!("controllers are not {}", add.join(", ")),
        Op::AddTunnel { tunnel, .. } => format!("tunnel to {} is missing", tunnel.remote),
        Op::UpdateTunnel { tunnel, .. } => format!(
            "tunnel to {} has other options or protection",
            tunnel.remote
        ),
        Op::DeleteTunnel { name, remote, .. } => {
            format!("tunnel {name} to {remote} is not configured")
        }
    }
}

use super::*;

fn spec(controller: Option<&str>) -> BridgeSpec {
    BridgeSpec {
        name: "br0".into(),
        datapath: Datapath::Netdev,
        controllers: controller.into_iter().map(str::to_owned).collect(),
    }
}

fn tunnel(remote: &str, protected: bool, source: Source) -> TunnelSpec {
    TunnelSpec {
        remote: remote.parse().unwrap(),
        key: TunnelKey::Flow,
        protected,
        source,
        peer: None,
    }
}

fn port_for(t: &TunnelSpec, uuid: &str) -> ObservedPort {
    ObservedPort {
        uuid: format!("p-{uuid}"),
        name: t.name(),
        protected: t.protected,
        external_ids: t.external_ids(),
        interfaces: vec![ObservedInterface {
            uuid: format!("i-{uuid}"),
            name: t.name(),
            kind: "vxlan".into(),
            options: t.options(),
            external_ids: t.external_ids(),
        }],
    }
}

fn internal_port() -> ObservedPort {
    ObservedPort {
        uuid: "p-br0".into(),
        name: "br0".into(),
        external_ids: BridgeSpec::internal_external_ids(),
        ..Default::default()
    }
}

fn observed(ports: Vec<ObservedPort>) -> ObservedBridge {
    ObservedBridge {
        uuid: "b".into(),
        version: "v1".into(),
        name: "br0".into(),
        datapath_type: "netdev".into(),
        fail_mode: Some("standalone".into()),
        external_ids: spec(None).external_ids(),
        controllers: vec![],
        ports: std::iter::once(internal_port()).chain(ports).collect(),
    }
}

fn none() -> PortsElsewhere {
    PortsElsewhere::new()
}

#[test]
fn fresh_node_creates_everything_in_one_op() {
    let ts = vec![tunnel("10.245.2.2", true, Source::CniConfig)];
    let ops = plan(
        &spec(Some("tcp:10.0.0.1:6653")),
        &ts,
        None,
        &none(),
        Some(Source::CniConfig),
    )
    .unwrap();
    assert_eq!(
        ops,
        vec![Op::CreateBridge {
            spec: spec(Some("tcp:10.0.0.1:6653")),
            tunnels: ts.clone(),
            flaxd: false,
        }]
    );
    // flaxd creates it marked as its own.
    let ops = plan(&spec(None), &ts, None, &none(), Some(Source::Flaxd)).unwrap();
    assert!(
        matches!(&ops[..], [Op::CreateBridge { flaxd: true, .. }]),
        "{ops:?}"
    );
}

fn marked(ports: Vec<ObservedPort>) -> ObservedBridge {
    let mut obs = observed(ports);
    obs.external_ids
        .insert(TUNNELS_KEY.into(), Source::Flaxd.as_str().into());
    obs
}

#[test]
fn flaxd_marks_the_bridge_adopts_the_plugins_tunnels_to_members_and_prunes_the_rest() {
    let member_by_plugin = tunnel("10.245.2.2", true, Source::CniConfig);
    let gone_by_plugin = tunnel("10.245.2.9", true, Source::CniConfig);
    let gone_by_flaxd = tunnel("10.245.2.8", true, Source::Flaxd);
    let obs = observed(vec![
        port_for(&member_by_plugin, "a"),
        port_for(&gone_by_plugin, "g"),
        port_for(&gone_by_flaxd, "f"),
    ]);
    let want = tunnel("10.245.2.2", true, Source::Flaxd);
    let ops = plan(
        &spec(None),
        std::slice::from_ref(&want),
        Some(&obs),
        &none(),
        Some(Source::Flaxd),
    )
    .unwrap();
    let del = |t: &TunnelSpec, uuid: &str| Op::DeleteTunnel {
        bridge: "br0".into(),
        port: format!("p-{uuid}"),
        name: t.name(),
        remote: t.remote,
    };
    assert_eq!(
        ops,
        vec![
            Op::MarkFlaxd {
                bridge: "br0".into()
            },
            Op::UpdateTunnel {
                port: "p-a".into(),
                interface: "i-a".into(),
                tunnel: want.clone(),
            },
            del(&gone_by_flaxd, "f"),
            del(&gone_by_plugin, "g"),
        ]
    );
    // Once marked and adopted, flaxd is in step.
    let adopted = marked(vec![port_for(&want, "a")]);
    assert_eq!(
        plan(
            &spec(None),
            std::slice::from_ref(&want),
            Some(&adopted),
            &none(),
            Some(Source::Flaxd)
        )
        .unwrap(),
        vec![]
    );
}

#[test]
fn the_plugin_writes_no_tunnel_and_no_controller_on_a_bridge_flaxd_manages() {
    let by_flaxd = tunnel("10.245.2.2", true, Source::Flaxd);
    let obs = marked(vec![port_for(&by_flaxd, "a")]);
    // Another key and protection for flaxd's tunnel, an extra VTEP, a controller: the
    // configuration of an ADD that disagrees with flaxd. Nothing of it is written.
    let mut other_key = tunnel("10.245.2.2", false, Source::CniConfig);
    other_key.key = TunnelKey::Vni(42);
    let extra = tunnel("10.245.2.7", true, Source::CniConfig);
    for writer in [Some(Source::CniConfig), None] {
        let ops = plan(
            &spec(Some("tcp:10.0.0.1:6653")),
            &[other_key.clone(), extra.clone()],
            Some(&obs),
            &none(),
            writer,
        )
        .unwrap();
        assert_eq!(ops, vec![], "{writer:?}");
    }
    // The bridge itself is still repaired: that is everyone's.
    let mut broken = marked(vec![port_for(&by_flaxd, "a")]);
    broken.fail_mode = None;
    assert_eq!(
        plan(
            &spec(None),
            &[],
            Some(&broken),
            &none(),
            Some(Source::CniConfig)
        )
        .unwrap(),
        vec![Op::SetFailMode {
            bridge: "br0".into()
        }]
    );
}

#[test]
fn the_plugin_never_rewrites_or_removes_a_flaxd_tunnel_on_an_unmarked_bridge() {
    let by_flaxd = tunnel("10.245.2.2", true, Source::Flaxd);
    let obs = observed(vec![port_for(&by_flaxd, "a")]);
    let mut other = tunnel("10.245.2.2", false, Source::CniConfig);
    other.key = TunnelKey::Vni(42);
    for wanted in [vec![other], vec![]] {
        assert_eq!(
            plan(
                &spec(None),
                &wanted,
                Some(&obs),
                &none(),
                Some(Source::CniConfig)
            )
            .unwrap(),
            vec![]
        );
    }
}

#[test]
fn warm_node_in_step_plans_nothing() {
    let ts = vec![
        tunnel("10.245.2.2", true, Source::CniConfig),
        tunnel("10.245.2.3", true, Source::CniConfig),
    ];
    let obs = observed(vec![port_for(&ts[0], "a"), port_for(&ts[1], "b")]);
    let ops = plan(
        &spec(None),
        &ts,
        Some(&obs),
        &none(),
        Some(Source::CniConfig),
    )
    .unwrap();
    assert_eq!(ops, vec![]);
}

#[test]
fn missing_tunnel_is_added_and_stale_one_of_same_source_removed() {
    let keep = tunnel("10.245.2.2", true, Source::CniConfig);
    let stale = tunnel("10.245.2.9", true, Source::CniConfig);
    let flaxd = tunnel("10.245.2.8", true, Source::Flaxd);
    let new = tunnel("10.245.2.3", true, Source::CniConfig);
    let obs = observed(vec![
        port_for(&keep, "a"),
        port_for(&stale, "s"),
        port_for(&flaxd, "f"),
    ]);
    let ops = plan(
        &spec(None),
        &[keep, new.clone()],
        Some(&obs),
        &none(),
        Some(Source::CniConfig),
    )
    .unwrap();
    assert_eq!(
        ops,
        vec![
            Op::AddTunnel {
                bridge: "br0".into(),
                tunnel: new
            },
            Op::DeleteTunnel {
                bridge: "br0".into(),
                port: "p-s".into(),
                name: stale.name(),
                remote: stale.remote
            },
        ]
    );
}

#[test]
fn no_prune_leaves_unwanted_tunnels() {
    let stale = tunnel("10.245.2.9", true, Source::CniConfig);
    let obs = observed(vec![port_for(&stale, "s")]);
    assert_eq!(
        plan(&spec(None), &[], Some(&obs), &none(), None).unwrap(),
        vec![]
    );
}

#[test]
fn protection_or_key_change_updates_in_place() {
    let old = tunnel("10.245.2.2", true, Source::CniConfig);
    let obs = observed(vec![port_for(&old, "a")]);
    let mut hub = old.clone();
    hub.protected = false;
    let mut keyed = old.clone();
    keyed.key = TunnelKey::Vni(7);
    for want in [hub, keyed] {
        let ops = plan(
            &spec(None),
            std::slice::from_ref(&want),
            Some(&obs),
            &none(),
            None,
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![Op::UpdateTunnel {
                port: "p-a".into(),
                interface: "i-a".into(),
                tunnel: want
            }]
        );
    }
}

#[test]
fn source_difference_alone_is_not_a_change() {
    let by_flaxd = tunnel("10.245.2.2", true, Source::Flaxd);
    let obs = observed(vec![port_for(&by_flaxd, "a")]);
    let want = tunnel("10.245.2.2", true, Source::CniConfig);
    assert_eq!(
        plan(
            &spec(None),
            &[want],
            Some(&obs),
            &none(),
            Some(Source::CniConfig)
        )
        .unwrap(),
        vec![]
    );
}

#[test]
fn foreign_bridge_and_datapath_mismatch_are_refused() {
    let mut foreign = observed(vec![]);
    foreign.external_ids.clear();
    assert!(matches!(
        plan(&spec(None), &[], Some(&foreign), &none(), None),
        Err(PlanError::BridgeNotOwned { .. })
    ));
    let mut system = observed(vec![]);
    system.datapath_type = String::new();
    assert!(matches!(
        plan(&spec(None), &[], Some(&system), &none(), None),
        Err(PlanError::DatapathMismatch { .. })
    ));
}

#[test]
fn name_held_by_a_foreign_port_is_refused() {
    let t = tunnel("10.245.2.2", true, Source::CniConfig);
    let mut foreign = port_for(&t, "x");
    foreign.external_ids.clear();
    let obs = observed(vec![foreign]);
    let err = plan(
        &spec(None),
        std::slice::from_ref(&t),
        Some(&obs),
        &none(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, PlanError::NameTaken { .. }), "{err}");
    assert!(err.to_string().contains("not created by Linen"), "{err}");

    let elsewhere = PortsElsewhere::from([(t.name(), "br-other".to_owned())]);
    let err = plan(
        &spec(None),
        std::slice::from_ref(&t),
        None,
        &elsewhere,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("br-other"), "{err}");
}

#[test]
fn renamed_tunnel_is_rebuilt_under_its_rule_name() {
    let t = tunnel("10.245.2.2", true, Source::CniConfig);
    let mut old = port_for(&t, "o");
    old.name = "vxold".into();
    old.interfaces[0].name = "vxold".into();
    let obs = observed(vec![old]);
    let ops = plan(
        &spec(None),
        std::slice::from_ref(&t),
        Some(&obs),
        &none(),
        None,
    )
    .unwrap();
    assert_eq!(ops.len(), 2);
    assert!(matches!(&ops[0], Op::DeleteTunnel { name, .. } if name == "vxold"));
    assert!(matches!(&ops[1], Op::AddTunnel { tunnel, .. } if *tunnel == t));
}

#[test]
fn controller_rows_follow_the_config_and_foreign_ones_stay() {
    let ours = ObservedController {
        uuid: "c-ours".into(),
        target: "tcp:10.0.0.1:6653".into(),
        external_ids: BridgeSpec::controller_external_ids(),
    };
    let foreign = ObservedController {
        uuid: "c-op".into(),
        target: "tcp:10.0.0.9:6653".into(),
        ..Default::default()
    };
    let set = |keep: &[&str], add: Option<&str>| Op::SetControllers {
        bridge: "br0".into(),
        keep: keep.iter().map(|s| s.to_string()).collect(),
        add: add.into_iter().map(str::to_owned).collect(),
    };
    let cases: Vec<(Vec<ObservedController>, Option<&str>, Vec<Op>)> = vec![
        (vec![], None, vec![]),
        (
            vec![],
            Some("tcp:10.0.0.1:6653"),
            vec![set(&[], Some("tcp:10.0.0.1:6653"))],
        ),
        (vec![ours.clone()], Some("tcp:10.0.0.1:6653"), vec![]),
        (
            vec![ours.clone()],
            Some("tcp:10.0.0.2:6653"),
            vec![set(&[], Some("tcp:10.0.0.2:6653"))],
        ),
        (vec![ours.clone()], None, vec![set(&[], None)]),
        (vec![foreign.clone()], None, vec![]),
        (
            vec![foreign.clone(), ours.clone()],
            None,
            vec![set(&["c-op"], None)],
        ),
        (
            vec![ours.clone(), ours.clone()],
            Some("tcp:10.0.0.1:6653"),
            vec![set(&[], Some("tcp:10.0.0.1:6653"))],
        ),
    ];
    for (controllers, want, ops) in cases {
        let mut obs = observed(vec![]);
        obs.controllers = controllers.clone();
        assert_eq!(
            plan(&spec(want), &[], Some(&obs), &none(), None).unwrap(),
            ops,
            "{controllers:?} {want:?}"
        );
    }
}

#[test]
fn several_controllers_are_one_set_in_any_order() {
    let row = |uuid: &str, target: &str| ObservedController {
        uuid: uuid.into(),
        target: target.into(),
        external_ids: BridgeSpec::controller_external_ids(),
    };
    let (a, b) = ("tcp:10.0.0.1:6653", "ssl:10.0.0.2:6653");
    let two = BridgeSpec {
        controllers: vec![b.into(), a.into()],
        ..spec(None)
    };
    let mut obs = observed(vec![]);
    obs.controllers = vec![row("u1", a), row("u2", b)];
    assert_eq!(plan(&two, &[], Some(&obs), &none(), None).unwrap(), vec![]);
    // One missing: the set is rewritten with both, sorted.
    obs.controllers = vec![row("u1", a)];
    assert_eq!(
        plan(&two, &[], Some(&obs), &none(), None).unwrap(),
        vec![Op::SetControllers {
            bridge: "br0".into(),
            keep: vec![],
            add: vec![b.into(), a.into()],
        }]
    );
}

#[test]
fn repairs_fail_mode_and_internal_port() {
    let mut obs = observed(vec![]);
    obs.fail_mode = Some("secure".into());
    obs.ports.clear();
    let ops = plan(&spec(None), &[], Some(&obs), &none(), None).unwrap();
    assert_eq!(
        ops,
        vec![
            Op::SetFailMode {
                bridge: "br0".into()
            },
            Op::AddInternalPort {
                bridge: "br0".into()
            }
        ]
    );
}

#[test]
fn a_bridge_name_held_by_a_port_of_another_bridge_is_a_permanent_conflict() {
    // ovsBridge names a port elsewhere: OVS would never create the internal port, so the
    // plan says so instead of committing a bridge that can never work.
    let s = spec(None);
    let elsewhere = PortsElsewhere::from([(s.name.clone(), "br-other".to_owned())]);
    let err = plan(&s, &[], None, &elsewhere, None).unwrap_err();
    assert!(
        matches!(&err, PlanError::BridgeNameTaken { holder, .. } if holder == "br-other"),
        "{err}"
    );
    // A port elsewhere with another name is no obstacle.
    let other = PortsElsewhere::from([("eth9".to_owned(), "br-other".to_owned())]);
    assert!(plan(&s, &[], None, &other, None).is_ok());
}

fn head_of(obs: &ObservedBridge) -> BridgeHead {
    BridgeHead {
        version: obs.version.clone(),
        name: obs.name.clone(),
        datapath_type: obs.datapath_type.clone(),
        fail_mode: obs.fail_mode.clone(),
        external_ids: obs.external_ids.clone(),
    }
}

fn internal_iface() -> ObservedInterface {
    let mut external_ids = BridgeSpec::internal_external_ids();
    external_ids.insert(BRIDGE_VERSION_KEY.into(), "v1".into());
    ObservedInterface {
        uuid: "i-br0".into(),
        name: "br0".into(),
        kind: "internal".into(),
        options: BTreeMap::new(),
        external_ids,
    }
}

#[test]
fn the_digest_covers_every_written_field_and_nothing_else() {
    let t = |remote: &str| tunnel(remote, true, Source::CniConfig);
    let base = desired_digest(&spec(None), &[t("10.245.2.2"), t("10.245.2.3")]);
    assert_eq!(base.len(), 16);
    // Order and duplicates of the input do not matter; the set does.
    assert_eq!(
        desired_digest(
            &spec(None),
            &[t("10.245.2.3"), t("10.245.2.2"), t("10.245.2.3")]
        ),
        base
    );
    let differs = [
        desired_digest(&spec(None), &[t("10.245.2.2")]),
        desired_digest(&spec(None), &[]),
        desired_digest(
            &spec(Some("tcp:10.0.0.1:6653")),
            &[t("10.245.2.2"), t("10.245.2.3")],
        ),
        desired_digest(
            &BridgeSpec {
                datapath: Datapath::System,
                ..spec(None)
            },
            &[t("10.245.2.2"), t("10.245.2.3")],
        ),
        desired_digest(
            &BridgeSpec {
                name: "br1".into(),
                ..spec(None)
            },
            &[t("10.245.2.2"), t("10.245.2.3")],
        ),
        desired_digest(
            &spec(None),
            &[
                t("10.245.2.2"),
                tunnel("10.245.2.3", false, Source::CniConfig),
            ],
        ),
        desired_digest(
            &spec(None),
            &[
                t("10.245.2.2"),
                TunnelSpec {
                    key: TunnelKey::Vni(7),
                    ..t("10.245.2.3")
                },
            ],
        ),
    ];
    for (i, d) in differs.iter().enumerate() {
        assert_ne!(*d, base, "variant {i}");
    }
}

#[test]
fn the_warm_check_passes_only_a_recorded_configuration_on_a_sound_bridge() {
    let ts = vec![tunnel("10.245.2.2", true, Source::CniConfig)];
    let sp = spec(None);
    let mut obs = observed(vec![port_for(&ts[0], "a")]);
    obs.external_ids
        .insert(DESIRED_KEY.into(), desired_digest(&sp, &ts));
    let good = head_of(&obs);
    let iface = internal_iface();
    assert!(warm_in_step(&sp, &ts, &good, Some(&iface)));

    // Each of these must send the ADD to the full read.
    let other_config = vec![tunnel("10.245.2.3", true, Source::CniConfig)];
    assert!(
        !warm_in_step(&sp, &other_config, &good, Some(&iface)),
        "other vtepIPs"
    );
    assert!(
        !warm_in_step(&spec(Some("tcp:10.0.0.1:6653")), &ts, &good, Some(&iface)),
        "a controller"
    );
    assert!(
        !warm_in_step(&sp, &ts, &good, None),
        "no internal interface"
    );
    let foreign_iface = ObservedInterface {
        external_ids: BTreeMap::new(),
        ..internal_iface()
    };
    assert!(
        !warm_in_step(&sp, &ts, &good, Some(&foreign_iface)),
        "interface not ours"
    );
    let tunnel_iface = ObservedInterface {
        kind: "vxlan".into(),
        ..internal_iface()
    };
    assert!(
        !warm_in_step(&sp, &ts, &good, Some(&tunnel_iface)),
        "not internal"
    );
    let mut h = good.clone();
    h.fail_mode = Some("secure".into());
    assert!(!warm_in_step(&sp, &ts, &h, Some(&iface)), "fail mode");
    let mut h = good.clone();
    h.fail_mode = None;
    assert!(!warm_in_step(&sp, &ts, &h, Some(&iface)), "fail mode unset");
    let mut h = good.clone();
    h.datapath_type = "system".into();
    assert!(!warm_in_step(&sp, &ts, &h, Some(&iface)), "datapath");
    let mut h = good.clone();
    h.external_ids.remove(OWNER_KEY);
    assert!(!warm_in_step(&sp, &ts, &h, Some(&iface)), "bridge not ours");
    let mut h = good.clone();
    h.external_ids.remove(DESIRED_KEY);
    assert!(
        !warm_in_step(&sp, &ts, &h, Some(&iface)),
        "nothing recorded"
    );

    // On a bridge flaxd manages, the plugin writes no tunnel: any configuration is warm.
    let mut h = good.clone();
    h.external_ids.remove(DESIRED_KEY);
    h.external_ids
        .insert(TUNNELS_KEY.into(), Source::Flaxd.as_str().into());
    assert!(warm_in_step(&sp, &other_config, &h, Some(&iface)));
    assert!(
        !warm_in_step(&sp, &other_config, &h, None),
        "still needs the internal port"
    );
}

#[test]
fn only_the_plugin_records_a_digest_and_only_when_it_changed() {
    let ts = vec![tunnel("10.245.2.2", true, Source::CniConfig)];
    let sp = spec(None);
    let obs = observed(vec![port_for(&ts[0], "a")]);
    let d = desired_digest(&sp, &ts);
    assert_eq!(
        digest_to_record(&sp, &ts, Some(&obs), Some(Source::CniConfig)),
        Some(d.clone())
    );
    let mut recorded = obs.clone();
    recorded.external_ids.insert(DESIRED_KEY.into(), d);
    assert_eq!(
        digest_to_record(&sp, &ts, Some(&recorded), Some(Source::CniConfig)),
        None
    );
    assert_eq!(
        digest_to_record(&sp, &ts, Some(&obs), Some(Source::Flaxd)),
        None
    );
    assert_eq!(
        digest_to_record(&sp, &ts, Some(&obs), None),
        None,
        "CHECK writes nothing"
    );
    assert_eq!(
        digest_to_record(&sp, &ts, None, Some(Source::CniConfig)),
        None,
        "the insert carries it"
    );
    let flaxds = marked(vec![port_for(&ts[0], "a")]);
    assert_eq!(
        digest_to_record(&sp, &ts, Some(&flaxds), Some(Source::CniConfig)),
        None
    );
}

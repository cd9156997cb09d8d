//! The linen plugin on one real node: ADD / CHECK / DEL for several pods in every CNI
//! version the reference plugins speak, 1.1.0 directly, MTU fitting, drift found by
//! CHECK and repaired by ADD, tunnels dropped from the config, and rows Linen did not
//! create left alone. Real ovsdb-server + ovs-vswitchd (netdev), real bridge/host-local.

mod plugin_support;

use std::net::IpAddr;

use linen_lab::Topology;
use plugin_support::*;
use serde_json::{Value, json};

/// The reference plugins (1.1.1) speak up to 1.0.0; 1.1.0 is tested on linen directly.
const CHAIN_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

#[test]
fn add_check_del_several_pods_in_every_version() {
    let lab = Lab::up(1, Topology::Mesh);
    // Remote VTEPs that need not answer: the tunnels only have to exist.
    let remotes = json!({"vtepIPs": ["10.245.2.1", "10.245.2.7", "10.245.2.8"]});
    for version in CHAIN_VERSIONS {
        let list = lab.conflist(0, version, remotes.clone());
        let mut pods: Vec<Pod> = (0..3)
            .map(|i| lab.pod(0, &format!("{}{i}", version.replace('.', ""))))
            .collect();
        for pod in &mut pods {
            let result = lab
                .add(&list, pod)
                .unwrap_or_else(|e| panic!("{version} ADD: {e}"));
            let names: Vec<&str> = result.interfaces.iter().map(|i| i.name.as_str()).collect();
            assert!(
                names.contains(&"kbr0") && names.contains(&"eth0"),
                "{version}: {names:?}"
            );
            assert_eq!(
                pod.mtu(),
                1450,
                "{version}: pod MTU fitted to the 1500-byte underlay"
            );
        }
        // The shared overlay: one bridge, its internal port on kbr0, a protected tunnel per
        // remote VTEP (the node's own address skipped), fail_mode standalone.
        let tunnels = lab.tunnels(0);
        assert_eq!(
            tunnels.keys().cloned().collect::<Vec<_>>(),
            vec!["10.245.2.7".to_string(), "10.245.2.8".to_string()],
            "{version}"
        );
        assert!(
            tunnels.values().all(|(_, protected)| *protected),
            "{version}: {tunnels:?}"
        );
        assert_eq!(
            lab.vsctl(0, &["get", "Bridge", "br0", "fail_mode"]).trim(),
            "standalone"
        );
        assert_eq!(
            lab.vsctl(0, &["get", "Bridge", "br0", "datapath_type"])
                .trim(),
            "netdev"
        );
        let links = lab.links_snapshot(0);
        assert!(
            links.contains("\"br0\" master=\"kbr0\""),
            "internal port not on kbr0:\n{links}"
        );

        // Pods on the node reach each other and the gateway through kbr0.
        assert!(pods[0].ping(pods[1].ip()), "{version}: pod to pod");
        assert!(
            pods[2].ping("10.244.1.1".parse().unwrap()),
            "{version}: pod to gateway"
        );

        for pod in &pods {
            if version >= "0.4.0" {
                lab.check(&list, pod)
                    .unwrap_or_else(|e| panic!("{version} CHECK: {e}"));
            }
            lab.del(&list, pod)
                .unwrap_or_else(|e| panic!("{version} DEL: {e}"));
            lab.del(&list, pod)
                .unwrap_or_else(|e| panic!("{version} second DEL: {e}"));
        }
        // DEL keeps the shared overlay for the next pods.
        assert_eq!(lab.tunnels(0).len(), 2, "{version}");
    }
}

/// Runs `bridge` alone for `pod` and returns its result: the prevResult linen gets.
fn bridge_only(lab: &Lab, pod: &mut Pod) -> Value {
    let list = lab.conflist(0, "1.0.0", json!({}));
    let mut only_bridge = list.clone();
    only_bridge["plugins"].as_array_mut().unwrap().truncate(1);
    let result = lab.add(&only_bridge, pod).expect("bridge ADD");
    result.to_value(cni::Version::V1_0_0)
}

fn linen_conf(lab: &Lab, version: &str, prev: Option<&Value>, extra: Value) -> Value {
    let mut conf = lab.conflist(0, version, extra)["plugins"][1].clone();
    conf["cniVersion"] = json!(version);
    conf["name"] = json!("linen-test");
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

fn env<'a>(command: &'a str, pod: &'a Pod) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "ctr-direct"),
        ("CNI_NETNS", pod.path.to_str().unwrap()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

#[test]
fn linen_speaks_1_1_0_reports_mtu_and_answers_status_and_gc() {
    let lab = Lab::up(2, Topology::Mesh);
    let mut pod = lab.pod(0, "v11");
    let prev = bridge_only(&lab, &mut pod);
    let conf = linen_conf(&lab, "1.1.0", Some(&prev), json!({}));
    let out = lab.invoke(
        0,
        &linen_bin(),
        &env("ADD", &pod),
        conf.to_string().as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let result = out.json();
    assert_eq!(result["cniVersion"], "1.1.0");
    let ifaces = result["interfaces"].as_array().unwrap();
    let eth0 = ifaces.iter().find(|i| i["name"] == "eth0").unwrap();
    assert_eq!(eth0["mtu"], 1450, "{result}");
    assert!(eth0["sandbox"].is_string());
    assert!(
        result["ips"][0].get("version").is_none(),
        "1.1.0 has no ips[].version"
    );
    assert_eq!(pod.mtu(), 1450);
    // The host end of the veth pair was lowered too, and reported.
    let veth = ifaces
        .iter()
        .find(|i| i["name"] != "eth0" && i["name"] != "kbr0")
        .unwrap();
    assert_eq!(veth["mtu"], 1450, "{result}");
    assert!(
        lab.links_snapshot(0)
            .contains(&format!("{} master=\"kbr0\" mtu=1450", veth["name"]))
    );

    // The same ADD answered in 0.3.1 keeps ips[].version and drops mtu.
    let conf031 = linen_conf(&lab, "0.3.1", Some(&prev), json!({}));
    let old = lab
        .invoke(
            0,
            &linen_bin(),
            &env("ADD", &pod),
            conf031.to_string().as_bytes(),
        )
        .json();
    assert_eq!(old["ips"][0]["version"], "4", "{old}");
    // Looked up by name, not index: a missing entry must not read as "no mtu".
    let old_ifaces = old["interfaces"].as_array().expect("interfaces");
    assert!(
        old_ifaces.iter().any(|i| i["name"] == veth["name"]),
        "the host veth is reported: {old}"
    );
    assert!(
        old_ifaces.iter().all(|i| i.get("mtu").is_none()),
        "0.3.1 has no interfaces[].mtu: {old}"
    );

    let check = lab.invoke(
        0,
        &linen_bin(),
        &env("CHECK", &pod),
        conf.to_string().as_bytes(),
    );
    assert_eq!(check.code, Some(0), "{}", check.stdout);

    let bare = linen_conf(&lab, "1.1.0", None, json!({}));
    let status = lab.invoke(
        0,
        &linen_bin(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
        bare.to_string().as_bytes(),
    );
    assert_eq!(status.code, Some(0), "{}", status.stdout);
    let mut gc = bare.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let gc_out = lab.invoke(
        0,
        &linen_bin(),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        gc.to_string().as_bytes(),
    );
    assert_eq!(gc_out.code, Some(0), "{}", gc_out.stdout);
    assert_eq!(
        lab.tunnels(0).len(),
        1,
        "GC leaves the shared overlay alone"
    );

    let mut down = bare.clone();
    down["ovsdbSocket"] = json!(format!("unix:{}/nothing.sock", lab.root.path().display()));
    let status = lab.invoke(
        0,
        &linen_bin(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
        down.to_string().as_bytes(),
    );
    assert_eq!(status.code, Some(1));
    assert_eq!(status.json()["code"], 50, "{}", status.stdout);

    let version = lab.invoke(
        0,
        &linen_bin(),
        &[("CNI_COMMAND", "VERSION")],
        br#"{"cniVersion":"1.1.0"}"#,
    );
    assert_eq!(
        version.json()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn explicit_mtu_is_applied_or_refused() {
    let lab = Lab::up(2, Topology::Mesh);
    let mut pod = lab.pod(0, "mtu");
    let prev = bridge_only(&lab, &mut pod);

    let ok = linen_conf(&lab, "1.1.0", Some(&prev), json!({"mtu": 1400}));
    let out = lab.invoke(
        0,
        &linen_bin(),
        &env("ADD", &pod),
        ok.to_string().as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(pod.mtu(), 1400);

    let before = (lab.ovs_snapshot(0), lab.links_snapshot(0));
    let too_big = linen_conf(&lab, "1.1.0", Some(&prev), json!({"mtu": 1451}));
    let out = lab.invoke(
        0,
        &linen_bin(),
        &env("ADD", &pod),
        too_big.to_string().as_bytes(),
    );
    assert_eq!(out.code, Some(1));
    let err = out.json();
    assert_eq!(err["code"], 7, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("at most 1450"),
        "{err}"
    );
    assert_eq!(
        (lab.ovs_snapshot(0), lab.links_snapshot(0)),
        before,
        "a refused ADD changes nothing"
    );
    assert_eq!(pod.mtu(), 1400);

    // A larger underlay (given explicitly) allows the pod MTU just refused.
    let jumbo = linen_conf(
        &lab,
        "1.1.0",
        Some(&prev),
        json!({"underlayMTU": 9000, "mtu": 1451}),
    );
    let out = lab.invoke(
        0,
        &linen_bin(),
        &env("ADD", &pod),
        jumbo.to_string().as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(pod.mtu(), 1451);
    let out = lab.invoke(
        0,
        &linen_bin(),
        &env("CHECK", &pod),
        jumbo.to_string().as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
}

#[test]
fn check_names_drift_and_add_repairs_it() {
    let lab = Lab::up(3, Topology::Mesh);
    let list = lab.conflist(0, "1.0.0", json!({"controller": "10.245.2.1:6653"}));
    let mut pod = lab.pod(0, "drift");
    lab.add(&list, &mut pod).expect("ADD");
    lab.check(&list, &pod).expect("CHECK after ADD");
    let controllers = lab.vsctl(0, &["--columns=target", "list", "Controller"]);
    assert!(controllers.contains("tcp:10.245.2.1:6653"), "{controllers}");

    let (name, _) = lab
        .tunnels(0)
        .get("10.245.2.3")
        .cloned()
        .expect("tunnel to n3");
    lab.vsctl(0, &["del-port", "br0", &name]);
    let err = lab
        .check(&list, &pod)
        .expect_err("CHECK must see the missing tunnel");
    let cni = err.cni_error().expect("typed").clone();
    assert_eq!(cni.code, 110, "{cni:?}");
    assert!(
        cni.msg.contains("tunnel to 10.245.2.3 is missing"),
        "{cni:?}"
    );

    lab.vsctl(
        0,
        &[
            "set",
            "Port",
            &lab.tunnels(0)["10.245.2.2"].0,
            "protected=false",
        ],
    );
    let err = lab
        .check(&list, &pod)
        .expect_err("CHECK must see the unprotected tunnel");
    assert!(err.cni_error().unwrap().msg.contains("10.245.2.2"), "{err}");

    run(std::process::Command::new("ip").args([
        "-n",
        &lab.node(0).name,
        "link",
        "set",
        "br0",
        "nomaster",
    ]));
    // Another pod's ADD repairs the shared state.
    let mut other = lab.pod(0, "repair");
    lab.add(&list, &mut other).expect("ADD repairs");
    lab.check(&list, &pod).expect("CHECK after repair");
    assert_eq!(lab.tunnels(0).len(), 2);
    assert!(lab.tunnels(0).values().all(|(_, p)| *p));
}

#[test]
fn tunnels_follow_the_config_and_foreign_rows_are_left_alone() {
    let lab = Lab::up(1, Topology::Mesh);
    let mut p1 = lab.pod(0, "a");
    lab.add(
        &lab.conflist(0, "1.0.0", json!({"vtepIPs": ["10.245.2.7", "10.245.2.8"]})),
        &mut p1,
    )
    .expect("ADD");
    assert_eq!(lab.tunnels(0).len(), 2);
    let mut p2 = lab.pod(0, "b");
    lab.add(
        &lab.conflist(0, "1.0.0", json!({"vtepIPs": ["10.245.2.7"]})),
        &mut p2,
    )
    .expect("ADD");
    assert_eq!(
        lab.tunnels(0).keys().collect::<Vec<_>>(),
        vec!["10.245.2.7"],
        "dropped VTEP removed"
    );

    // A port Linen did not create, holding the name the naming rule gives 10.245.2.9.
    let foreign = linen::naming::tunnel_port_name("10.245.2.9".parse::<IpAddr>().unwrap());
    lab.vsctl(
        0,
        &[
            "add-port",
            "br0",
            &foreign,
            "--",
            "set",
            "Interface",
            &foreign,
            "type=internal",
        ],
    );
    let before = lab.ovs_snapshot(0);
    let mut p3 = lab.pod(0, "c");
    let err = lab
        .add(
            &lab.conflist(0, "1.0.0", json!({"vtepIPs": ["10.245.2.7", "10.245.2.9"]})),
            &mut p3,
        )
        .expect_err("name conflict");
    let cni = err.cni_error().expect("typed").clone();
    assert_eq!(cni.code, 101, "{cni:?}");
    assert!(cni.msg.contains("not created by Linen"), "{cni:?}");
    assert_eq!(
        lab.ovs_snapshot(0),
        before,
        "the foreign port and everything else untouched"
    );

    // A bridge of the configured name that Linen did not create is refused, untouched.
    lab.vsctl(
        0,
        &[
            "add-br",
            "brx",
            "--",
            "set",
            "Bridge",
            "brx",
            "datapath_type=netdev",
        ],
    );
    let before = lab.ovs_snapshot(0);
    let mut p4 = lab.pod(0, "d");
    let err = lab
        .add(
            &lab.conflist(0, "1.0.0", json!({"ovsBridge": "brx"})),
            &mut p4,
        )
        .expect_err("foreign bridge");
    assert_eq!(err.cni_error().unwrap().code, 101, "{err}");
    assert_eq!(lab.ovs_snapshot(0), before);
}

#[test]
fn del_succeeds_with_ovs_down_and_without_netns() {
    let lab = Lab::up(1, Topology::Mesh);
    let list = lab.conflist(0, "1.0.0", json!({}));
    let mut pod = lab.pod(0, "gone");
    lab.add(&list, &mut pod).expect("ADD");
    // Stop the node's ovsdb-server: linen can no longer reach OVSDB.
    run(lab
        .node(0)
        .ovs()
        .appctl(linen_lab::Daemon::OvsdbServer)
        .arg("exit"));
    let conf = linen_conf(&lab, "1.0.0", None, json!({}));
    let out = lab.invoke(
        0,
        &linen_bin(),
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "ctr-x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ],
        conf.to_string().as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(out.stdout.trim(), "", "DEL prints nothing on success");
    lab.del(&list, &pod).expect("chain DEL with OVS down");
}

/// The warm ADD reads two rows by name when the bridge records this configuration and has
/// not changed since; any other state (another configuration, a port removed by hand, a
/// fresh node) sends it to the full read, which repairs and records again.
#[test]
fn a_warm_add_reads_two_rows_and_any_drift_sends_it_to_the_full_read() {
    let lab = Lab::up(3, Topology::Mesh);
    let mut anchor = lab.pod(0, "warm");
    let prev = bridge_only(&lab, &mut anchor);
    let add = |extra: Value| {
        let conf = linen_conf(&lab, "1.0.0", Some(&prev), extra);
        let mut env = env("ADD", &anchor);
        env.push(("LINEN_LOG", "linen=debug"));
        let out = lab.invoke(0, &linen_bin(), &env, conf.to_string().as_bytes());
        assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
        if out.stderr.contains("warm: the bridge is as") {
            "warm"
        } else {
            assert!(out.stderr.contains("full read"), "{}", out.stderr);
            "full"
        }
    };
    let recorded = || {
        lab.vsctl(
            0,
            &[
                "get",
                "Interface",
                "br0",
                "external_ids:linen-bridge-version",
            ],
        )
    };

    assert_eq!(add(json!({})), "full", "a fresh node");
    // ovs-vswitchd fills in the bridge's status columns after the create; one more full
    // read records the settled row.
    let mut paths = vec![add(json!({}))];
    paths.push(add(json!({})));
    assert_eq!(paths.last(), Some(&"warm"), "{paths:?}");
    assert_eq!(add(json!({})), "warm");
    // (ovs-vsctl cannot show `_version`; the record is a uuid, and the forged one below
    // shows it is compared with the row's own.)
    let rec = recorded();
    let rec = rec.trim().trim_matches('"');
    assert!(
        rec.len() == 36 && rec.split('-').map(str::len).eq([8, 4, 4, 4, 12]),
        "{rec}"
    );
    let digest = lab.vsctl(0, &["get", "Bridge", "br0", "external_ids:linen-desired"]);
    assert_eq!(digest.trim().trim_matches('"').len(), 16, "{digest}");

    // Another configuration: full read, then warm with it.
    let extra = json!({"controller": "10.245.2.1:6653"});
    assert_eq!(add(extra.clone()), "full");
    assert_eq!(add(extra.clone()), "warm");
    let controllers = lab.vsctl(0, &["--bare", "--columns=target", "list", "Controller"]);
    assert_eq!(controllers.trim(), "tcp:10.245.2.1:6653");

    // A tunnel removed by hand changes the bridge row: the next ADD reads everything and
    // puts it back.
    let (name, _) = lab.tunnels(0)["10.245.2.3"].clone();
    lab.vsctl(0, &["del-port", "br0", &name]);
    assert_eq!(add(extra.clone()), "full");
    assert!(lab.tunnels(0).contains_key("10.245.2.3"), "repaired");
    assert_eq!(add(extra.clone()), "warm");

    // A controller removed by hand, likewise.
    lab.vsctl(0, &["del-controller", "br0"]);
    assert_eq!(add(extra.clone()), "full");
    let controllers = lab.vsctl(0, &["--bare", "--columns=target", "list", "Controller"]);
    assert_eq!(controllers.trim(), "tcp:10.245.2.1:6653", "repaired");

    // A forged record does not make a stale bridge warm: the version is OVSDB's own.
    lab.vsctl(0, &["del-port", "br0", &lab.tunnels(0)["10.245.2.2"].0]);
    lab.vsctl(
        0,
        &[
            "set",
            "Interface",
            "br0",
            "external_ids:linen-bridge-version=forged",
        ],
    );
    assert_eq!(add(extra), "full");
    assert_eq!(lab.tunnels(0).len(), 2);
}

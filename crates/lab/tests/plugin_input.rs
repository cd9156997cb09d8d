//! Bad input gets the right CNI error code and changes nothing (OVS rows and links are
//! compared before and after), and 32 concurrent ADDs on a fresh node all succeed and
//! leave exactly one bridge, one port per VTEP and one controller row.

mod plugin_support;

use linen_lab::Topology;
use plugin_support::*;
use serde_json::{Value, json};

struct Case {
    what: &'static str,
    /// Environment overrides: `None` removes the variable.
    env: Vec<(&'static str, Option<&'static str>)>,
    stdin: Stdin,
    code: u64,
    /// A fragment the message or details must contain.
    says: &'static str,
}

enum Stdin {
    Raw(&'static str),
    /// The valid linen config with this patch merged in.
    Patch(Value),
    /// The valid config with these top-level keys removed.
    Without(&'static [&'static str]),
}

#[test]
fn bad_input_gets_the_right_code_and_changes_nothing() {
    let lab = Lab::up(2, Topology::Mesh);
    let mut pod = lab.pod(0, "bad");
    // A real prevResult from the bridge plugin, so only the case's fault is at fault.
    let mut bridge_list = lab.conflist(0, "1.0.0", json!({}));
    bridge_list["plugins"].as_array_mut().unwrap().truncate(1);
    let prev = lab
        .add(&bridge_list, &mut pod)
        .expect("bridge ADD")
        .to_value(cni::Version::V1_0_0);
    let mut valid =
        lab.conflist(0, "1.0.0", json!({"controller": "10.245.2.1:6653"}))["plugins"][1].clone();
    valid["cniVersion"] = json!("1.0.0");
    valid["name"] = json!("linen-test");
    valid["prevResult"] = prev.clone();
    // Names in prevResult are input too: a name longer than any the kernel gives.
    let long_name = {
        let mut p = prev.clone();
        p["interfaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "x".repeat(70_000)}));
        p
    };
    // CNI_NETNS naming something that is not a network namespace: a FIFO (opening it
    // blocked forever) and a regular file. Leaked: Case holds &'static str.
    let scratch = testkit::tempdir().expect("scratch dir");
    let fifo = scratch.path().join("fifo");
    run(std::process::Command::new("mkfifo").arg(&fifo));
    let file = scratch.path().join("file");
    std::fs::write(&file, "not a namespace").unwrap();
    let fifo: &'static str = Box::leak(fifo.display().to_string().into_boxed_str());
    let file: &'static str = Box::leak(file.display().to_string().into_boxed_str());
    // A port named `pbusy` on another bridge (a patch port: no kernel link): a bridge of
    // that name can never get its internal port, a permanent conflict, not "retry later".
    lab.vsctl(
        0,
        &[
            "add-br",
            "lntother",
            "--",
            "set",
            "bridge",
            "lntother",
            "datapath_type=netdev",
            "--",
            "add-port",
            "lntother",
            "pbusy",
            "--",
            "set",
            "interface",
            "pbusy",
            "type=patch",
            "options:peer=pnowhere",
        ],
    );
    let no_bridge = {
        let mut p = prev.clone();
        p["interfaces"]
            .as_array_mut()
            .unwrap()
            .retain(|i| i["name"] != "kbr0");
        p
    };

    let cases = vec![
        Case {
            what: "malformed JSON",
            env: vec![],
            stdin: Stdin::Raw("{\"cniVersion\": "),
            code: 6,
            says: "unmarshalling",
        },
        Case {
            what: "not an object",
            env: vec![],
            stdin: Stdin::Raw("[1,2]"),
            code: 6,
            says: "not a JSON object",
        },
        Case {
            what: "unknown cniVersion",
            env: vec![],
            stdin: Stdin::Patch(json!({"cniVersion": "0.9.9"})),
            code: 1,
            says: "0.9.9",
        },
        Case {
            what: "missing cniVersion",
            env: vec![],
            stdin: Stdin::Without(&["cniVersion"]),
            code: 1,
            says: "no cniVersion",
        },
        Case {
            what: "unknown CNI_COMMAND",
            env: vec![("CNI_COMMAND", Some("FROB"))],
            stdin: Stdin::Patch(json!({})),
            code: 4,
            says: "FROB",
        },
        Case {
            what: "missing CNI_NETNS",
            env: vec![("CNI_NETNS", None)],
            stdin: Stdin::Patch(json!({})),
            code: 4,
            says: "CNI_NETNS",
        },
        Case {
            what: "missing CNI_CONTAINERID",
            env: vec![("CNI_CONTAINERID", None)],
            stdin: Stdin::Patch(json!({})),
            code: 4,
            says: "CNI_CONTAINERID",
        },
        Case {
            what: "missing CNI_IFNAME",
            env: vec![("CNI_IFNAME", None)],
            stdin: Stdin::Patch(json!({})),
            code: 4,
            says: "CNI_IFNAME",
        },
        Case {
            what: "bad CNI_IFNAME",
            env: vec![("CNI_IFNAME", Some("eth0/x"))],
            stdin: Stdin::Patch(json!({})),
            code: 4,
            says: "CNI_IFNAME contains /",
        },
        Case {
            what: "a network namespace that does not exist",
            env: vec![("CNI_NETNS", Some("/var/run/netns/linen-no-such-pod"))],
            stdin: Stdin::Patch(json!({})),
            code: 3,
            says: "linen-no-such-pod",
        },
        Case {
            what: "bad IP in vtepIPs",
            env: vec![],
            stdin: Stdin::Patch(json!({"vtepIPs": ["10.245.2.2", "10.245.2.x"]})),
            code: 7,
            says: "vtepIPs[1]",
        },
        Case {
            what: "loopback VTEP",
            env: vec![],
            stdin: Stdin::Patch(json!({"vtepIPs": ["127.0.0.1"]})),
            code: 7,
            says: "loopback",
        },
        Case {
            what: "vtepIPs not a list",
            env: vec![],
            stdin: Stdin::Patch(json!({"vtepIPs": "10.245.2.2"})),
            code: 7,
            says: "vtepIPs",
        },
        Case {
            what: "bad controller",
            env: vec![],
            stdin: Stdin::Patch(json!({"controller": "controller:port"})),
            code: 7,
            says: "controller",
        },
        Case {
            what: "bad bridge name",
            env: vec![],
            stdin: Stdin::Patch(json!({"ovsBridge": "a-name-too-long-for-linux"})),
            code: 7,
            says: "ovsBridge",
        },
        Case {
            what: "bad datapath",
            env: vec![],
            stdin: Stdin::Patch(json!({"datapathType": "dpdk"})),
            code: 7,
            says: "datapathType",
        },
        Case {
            what: "bad vni",
            env: vec![],
            stdin: Stdin::Patch(json!({"vni": 99999999})),
            code: 7,
            says: "vni",
        },
        Case {
            what: "conflicting seed fields",
            env: vec![],
            stdin: Stdin::Patch(
                json!({"isMaster": true, "runtimeConfig": {"ovs": {"isMaster": false}}}),
            ),
            code: 7,
            says: "isMaster",
        },
        Case {
            what: "no prevResult",
            env: vec![],
            stdin: Stdin::Without(&["prevResult"]),
            code: 7,
            says: "chained",
        },
        Case {
            what: "prevResult without a bridge",
            env: vec![],
            stdin: Stdin::Patch(json!({"prevResult": no_bridge})),
            code: 7,
            says: "no Linux bridge",
        },
        Case {
            what: "malformed prevResult",
            env: vec![],
            stdin: Stdin::Patch(json!({"prevResult": {"ips": "nope"}})),
            code: 6,
            says: "prevResult",
        },
        Case {
            what: "mtu too large",
            env: vec![],
            stdin: Stdin::Patch(json!({"mtu": 1500})),
            code: 7,
            says: "at most 1450",
        },
        Case {
            what: "NUL in the bridge name",
            env: vec![],
            stdin: Stdin::Patch(json!({"ovsBridge": "br\u{0}x"})),
            code: 7,
            says: "ovsBridge",
        },
        Case {
            what: "bridge name held by a port of another bridge",
            env: vec![],
            stdin: Stdin::Patch(json!({"ovsBridge": "pbusy"})),
            code: 101,
            says: "already exists on bridge lntother",
        },
        Case {
            what: "controller path with a newline",
            env: vec![],
            stdin: Stdin::Patch(json!({"controller": "unix:/run/ctl.sock\nx"})),
            code: 7,
            says: "controller",
        },
        Case {
            what: "controller path with a NUL",
            env: vec![],
            stdin: Stdin::Patch(json!({"controller": "unix:/run/ctl\u{0}.sock"})),
            code: 7,
            says: "controller",
        },
        Case {
            what: "broadcast controller",
            env: vec![],
            stdin: Stdin::Patch(json!({"controller": "tcp:255.255.255.255:6653"})),
            code: 7,
            says: "controller",
        },
        Case {
            what: "link-local VTEP without a scope",
            env: vec![],
            stdin: Stdin::Patch(json!({"vtepIPs": ["fe80::1"]})),
            code: 7,
            says: "link-local",
        },
        Case {
            what: "more VTEPs than the cap",
            env: vec![],
            stdin: Stdin::Patch(json!({
                "vtepIPs": (0..=linen::config::MAX_VTEPS)
                    .map(|i| format!("10.{}.{}.1", i / 256, i % 256))
                    .collect::<Vec<_>>()
            })),
            code: 7,
            says: "at most 5000",
        },
        Case {
            what: "70,000-byte interface name in prevResult",
            env: vec![],
            stdin: Stdin::Patch(json!({"prevResult": long_name})),
            code: 7,
            says: "prevResult.interfaces[",
        },
        Case {
            what: "CNI_NETNS is a FIFO",
            env: vec![("CNI_NETNS", Some(fifo))],
            stdin: Stdin::Patch(json!({})),
            code: 4,
            says: "not a network namespace",
        },
        Case {
            what: "CNI_NETNS is a regular file",
            env: vec![("CNI_NETNS", Some(file))],
            stdin: Stdin::Patch(json!({})),
            code: 4,
            says: "not a network namespace",
        },
        Case {
            what: "unreachable OVSDB",
            env: vec![],
            stdin: Stdin::Patch(json!({"ovsdbSocket": "unix:/var/run/linen-nothing-here.sock"})),
            code: 11,
            says: "linen-nothing-here",
        },
    ];

    let base_env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-bad"),
        ("CNI_NETNS", pod.path.to_str().unwrap()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let before = (lab.ovs_snapshot(0), lab.links_snapshot(0), links(&pod.name));
    assert!(
        !before.0.contains("\"br0\""),
        "fresh node: no OVS bridge yet"
    );
    let mut failures = Vec::new();
    for case in &cases {
        assert!(
            !case.says.is_empty(),
            "{}: name what the message says",
            case.what
        );
        let mut env: Vec<(&str, &str)> = base_env.to_vec();
        for (k, v) in &case.env {
            env.retain(|(ek, _)| ek != k);
            if let Some(v) = v {
                env.push((k, v));
            }
        }
        let stdin = match &case.stdin {
            Stdin::Raw(s) => s.to_string(),
            Stdin::Patch(p) => {
                let mut c = valid.clone();
                merge(&mut c, p.clone());
                c.to_string()
            }
            Stdin::Without(keys) => {
                let mut c = valid.clone();
                for k in *keys {
                    c.as_object_mut().unwrap().remove(*k);
                }
                c.to_string()
            }
        };
        let out = lab.invoke(0, &linen_bin(), &env, stdin.as_bytes());
        let err: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        let text = format!(
            "{} {}",
            err["msg"].as_str().unwrap_or(""),
            err["details"].as_str().unwrap_or("")
        );
        if out.code != Some(1)
            || err["code"] != case.code
            || !text.contains(case.says)
            || out.stderr.contains("panicked")
        {
            failures.push(format!(
                "{}: exit {:?}, want code {} saying {:?}, got {}\nstderr: {}",
                case.what, out.code, case.code, case.says, out.stdout, out.stderr
            ));
        }
        let after = (lab.ovs_snapshot(0), lab.links_snapshot(0), links(&pod.name));
        if after != before {
            failures.push(format!("{}: changed state", case.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // No CNI_COMMAND at all is a person running the binary by hand: like the reference
    // plugins, it says what it is on stderr, prints nothing on stdout and does nothing.
    let env: Vec<(&str, &str)> = base_env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_COMMAND")
        .collect();
    let out = lab.invoke(0, &linen_bin(), &env, valid.to_string().as_bytes());
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), ""),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("linen v"), "{}", out.stderr);
    assert_eq!(
        (lab.ovs_snapshot(0), lab.links_snapshot(0), links(&pod.name)),
        before
    );

    // The valid config does work, so every refusal above was about its own fault.
    let out = lab.invoke(0, &linen_bin(), &base_env, valid.to_string().as_bytes());
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
}

#[test]
fn thirty_two_concurrent_adds_on_a_fresh_node() {
    let lab = Lab::up(1, Topology::Mesh);
    let vteps = json!({"vtepIPs": ["10.245.2.1", "10.245.2.7", "10.245.2.8", "10.245.2.9"], "controller": "10.245.2.1:6653"});
    let list = lab.conflist(0, "1.0.0", vteps);
    let mut pods: Vec<Pod> = (0..32).map(|i| lab.pod(0, &format!("c{i}"))).collect();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter_mut()
            .map(|pod| {
                let (lab, list) = (&lab, &list);
                s.spawn(move || {
                    lab.add(list, pod)
                        .map(drop)
                        .map_err(|e| format!("{}: {e}", pod.name))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        errors.is_empty(),
        "{} of 32 ADDs failed:\n{}",
        errors.len(),
        errors.join("\n")
    );

    let bridges = lab.vsctl(0, &["--bare", "--columns=name", "list", "Bridge"]);
    let mut names: Vec<&str> = bridges.split_whitespace().collect();
    names.sort();
    assert_eq!(names, vec!["br-phy", "br0"], "exactly one Linen bridge");
    let ports = lab.vsctl(0, &["list-ports", "br0"]);
    let mut ports: Vec<&str> = ports.split_whitespace().collect();
    ports.sort();
    assert_eq!(
        ports,
        vec!["vxif10_245_2_7", "vxif10_245_2_8", "vxif10_245_2_9"],
        "one port per remote VTEP"
    );
    let controllers = lab.vsctl(0, &["--bare", "--columns=target", "list", "Controller"]);
    assert_eq!(
        controllers.split_whitespace().collect::<Vec<_>>(),
        vec!["tcp:10.245.2.1:6653"],
        "one controller row"
    );
    let ifaces = lab.vsctl(0, &["--bare", "--columns=name", "list", "Interface"]);
    assert_eq!(ifaces.split_whitespace().filter(|n| *n == "br0").count(), 1);

    // Every pod got its own address and reaches the gateway.
    let mut ips: Vec<_> = pods.iter().map(|p| p.ip()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 32);
    for pod in pods.iter().step_by(8) {
        assert!(pod.ping("10.244.1.1".parse().unwrap()), "{}", pod.name);
    }
    // CHECK of the whole chain for every pod: the bridge plugin's part compares the Linux
    // bridge's MAC with the one in the cached result, which concurrent first ADDs can
    // change after the bridge plugin recorded it (Linen's result carries the current one).
    for pod in &pods {
        lab.check(&list, pod)
            .unwrap_or_else(|e| panic!("CHECK {}: {e}", pod.name));
    }
}

use serde_json::json;

use super::*;

/// The bridge plugin's result from SPEC.md v1.1.0's appendix ("Add example").
fn spec_example() -> Value {
    json!({
        "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth3243", "mac": "55:44:33:22:11:11"},
            {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
        ],
        "dns": {"nameservers": ["10.1.0.1"]}
    })
}

/// A 1.1.0 result using every field, plus unknown keys at every level.
fn full_1_1() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "eth0", "mac": "99:88:77:66:55:44", "mtu": 1450,
             "sandbox": "/var/run/netns/blue", "socketPath": "/run/vhu.sock",
             "pciID": "0000:00:1f.6", "x-if": 1}
        ],
        "ips": [
            {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0, "x-ip": true},
            {"address": "fd00::5/64", "interface": 0}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360,
             "priority": 10, "table": 100, "scope": 0, "x-route": "r"},
            {"dst": "::/0"}
        ],
        "dns": {"nameservers": ["10.1.0.1"], "domain": "example", "search": ["a", "b"],
                "options": ["ndots:5"], "x-dns": []},
        "x-top": {"k": "v"}
    })
}

#[test]
fn parses_spec_example() {
    let r = Result::from_value(spec_example(), Version::V1_1_0).unwrap();
    assert_eq!(r.interfaces.len(), 3);
    assert_eq!(
        r.interfaces[2].sandbox.as_deref(),
        Some("/var/run/netns/blue")
    );
    assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/16");
    assert_eq!(r.ips[0].gateway, Some("10.1.0.1".parse().unwrap()));
    assert_eq!(r.ips[0].interface, Some(2));
    assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
    assert_eq!(r.dns.nameservers, ["10.1.0.1"]);
    // Emitting it again gives the spec's JSON back, plus cniVersion.
    let mut want = spec_example();
    want["cniVersion"] = "1.1.0".into();
    assert_eq!(r.to_value(Version::V1_1_0), want);
}

#[test]
fn emits_ip_version_only_for_0x() {
    let r = Result::from_value(full_1_1(), Version::V1_1_0).unwrap();
    for v in Version::SUPPORTED {
        let out = r.to_value(*v);
        assert_eq!(out["cniVersion"], v.as_str());
        let ips = out["ips"].as_array().unwrap();
        if v.has_ip_version_field() {
            assert_eq!(ips[0]["version"], "4", "{v}");
            assert_eq!(ips[1]["version"], "6", "{v}");
        } else {
            assert!(ips.iter().all(|ip| ip.get("version").is_none()), "{v}");
        }
    }
}

#[test]
fn drops_1_1_fields_for_older_versions() {
    let r = Result::from_value(full_1_1(), Version::V1_1_0).unwrap();
    for v in Version::SUPPORTED {
        let out = r.to_value(*v);
        let iface = &out["interfaces"][0];
        let route = &out["routes"][0];
        for key in ["mtu", "socketPath", "pciID"] {
            assert_eq!(
                iface.get(key).is_some(),
                v.has_1_1_result_fields(),
                "{v} {key}"
            );
        }
        for key in ["mtu", "advmss", "priority", "table", "scope"] {
            assert_eq!(
                route.get(key).is_some(),
                v.has_1_1_result_fields(),
                "{v} {key}"
            );
        }
        // Unknown keys survive in every version.
        assert_eq!(iface["x-if"], 1);
        assert_eq!(out["ips"][0]["x-ip"], true);
        assert_eq!(route["x-route"], "r");
        assert_eq!(out["dns"]["x-dns"], json!([]));
        assert_eq!(out["x-top"], json!({"k": "v"}));
        assert_eq!(route["gw"], "10.1.0.1");
    }
    assert_eq!(r.to_value(Version::V1_1_0), full_1_1());
}

#[test]
fn parses_0_4_0_with_ip_version() {
    // The shape of SPEC.md v0.4.0's examples.
    let v040 = json!({
        "cniVersion": "0.4.0",
        "ips": [{"version": "4", "address": "10.0.0.5/32", "interface": 2}],
        "interfaces": [{"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}],
        "dns": {"nameservers": ["10.1.0.1"]}
    });
    let (v, r) = Result::from_slice(v040.to_string().as_bytes(), Version::V1_0_0).unwrap();
    assert_eq!(v, Version::V0_4_0);
    assert!(r.ips[0].extra.is_empty(), "version is not an unknown key");
    assert_eq!(r.to_value(Version::V0_4_0), v040);
    let up = r.to_value(Version::V1_0_0);
    assert!(up["ips"][0].get("version").is_none());
}

/// Parse in every version, emit in every other, parse again: the typed result
/// is unchanged except for the fields the target version cannot carry.
#[test]
fn round_trip_every_version_pair() {
    let full = Result::from_value(full_1_1(), Version::V1_1_0).unwrap();
    for from in Version::SUPPORTED {
        let wire_from = full.to_value(*from);
        let (got_from, parsed) =
            Result::from_slice(wire_from.to_string().as_bytes(), Version::LATEST).unwrap();
        assert_eq!(got_from, *from);
        for to in Version::SUPPORTED {
            let wire_to = parsed.to_value(*to);
            let (got_to, back) =
                Result::from_slice(wire_to.to_string().as_bytes(), Version::LATEST).unwrap();
            assert_eq!(got_to, *to);
            // Emitting the twice-converted result in the first version gives the
            // same bytes whenever no 1.1-only field was lost on the way.
            let keeps_all = !from.has_1_1_result_fields() || to.has_1_1_result_fields();
            if keeps_all {
                assert_eq!(back.to_value(*from), wire_from, "{from} -> {to} -> {from}");
            } else {
                assert_eq!(
                    back.to_value(*to),
                    full.to_value(*to),
                    "{from} -> {to}: the target's view is kept"
                );
            }
        }
    }
}

#[test]
fn ipam_result_without_interfaces() {
    // host-local's output: no interfaces, no interface index.
    let r = Result::from_value(
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}]}),
        Version::V1_0_0,
    )
    .unwrap();
    assert!(r.interfaces.is_empty());
    assert_eq!(r.ips[0].interface, None);
    let out = r.to_value(Version::V1_0_0);
    assert!(out.get("interfaces").is_none());
    assert!(
        out.get("dns").is_none(),
        "empty dns is omitted like libcni does"
    );
}

#[test]
fn result_version_defaulting() {
    let table: [(&str, Version, Option<Version>); 5] = [
        (r#"{"ips": []}"#, Version::V0_4_0, Some(Version::V0_4_0)),
        (
            r#"{"cniVersion": "", "ips": []}"#,
            Version::V1_0_0,
            Some(Version::V1_0_0),
        ),
        (
            r#"{"cniVersion": "0.3.1"}"#,
            Version::V1_0_0,
            Some(Version::V0_3_1),
        ),
        (r#"{"cniVersion": "0.2.0"}"#, Version::V1_0_0, None),
        (r#"{"cniVersion": 1}"#, Version::V1_0_0, None),
    ];
    for (json, default, want) in table {
        let got = Result::from_slice(json.as_bytes(), default)
            .ok()
            .map(|(v, _)| v);
        assert_eq!(got, want, "{json}");
    }
}

#[test]
fn rejects_malformed() {
    for bad in [
        json!([]),
        json!({"ips": [{"address": "10.1.0.5"}]}),
        json!({"ips": [{"address": "not-an-ip/24"}]}),
        json!({"routes": [{"gw": "10.0.0.1"}]}),
        json!({"interfaces": [{"mac": "aa"}]}),
        json!({"ips": [{"address": "10.0.0.1/8", "interface": -1}]}),
    ] {
        assert!(
            Result::from_value(bad.clone(), Version::V1_0_0).is_err(),
            "{bad}"
        );
    }
}

//! Property tests (issue 9's fuzzing): the plugin's configuration is untrusted input. Any
//! JSON either gives a configuration that keeps Linen's invariants or a named error,
//! never a panic. Figures are printed.

use linen::config::{ConfigError, LinenConfig, MAX_VTEPS, parse_controller, unusable_vtep};
use linen::naming::is_creatable_ifname;
use proptest::prelude::*;
use testkit::props;

const CASES: u32 = 20_000;

const KEYS: &[&str] = &[
    "isMaster",
    "ovsBridge",
    "vtepIPs",
    "controller",
    "ovsdbSocket",
    "datapathType",
    "vni",
    "mtu",
    "underlayMTU",
    "hostPortDir",
    "runtimeConfig",
];
const STRINGS: &[&str] = &[
    "br0",
    "br%d",
    "brà",
    "a-name-too-long-for-linux",
    "10.245.2.2",
    "::ffff:10.245.2.2",
    "fe80::1",
    "127.0.0.1",
    "tcp:10.0.0.1:6653",
    "unix:/run/ctl.sock",
    "unix:/run/a\nb",
    "tcp:255.255.255.255:6653",
    "10.0.0.1:6653",
    "netdev",
    "system",
    "/var/lib/x",
    "x\0y",
];

#[test]
fn any_config_is_valid_by_linens_rules_or_a_named_error() {
    props::check(
        "linen config",
        CASES,
        prop_oneof![props::json(), props::object_with(KEYS, STRINGS)],
        |conf| {
            match LinenConfig::from_json(&conf) {
                Ok(cfg) => {
                    prop_assert!(is_creatable_ifname(&cfg.bridge), "{:?}", cfg.bridge);
                    prop_assert!(cfg.vtep_ips.len() <= MAX_VTEPS);
                    for ip in &cfg.vtep_ips {
                        prop_assert_eq!(*ip, ip.to_canonical());
                        prop_assert!(unusable_vtep(*ip).is_none(), "{ip}");
                    }
                    for c in &cfg.controller {
                        prop_assert_eq!(parse_controller(c).ok(), Some(c.clone()));
                    }
                }
                // Every refusal names the field at fault (portMappings errors name the
                // mapping instead).
                Err(e) => prop_assert!(
                    e.to_string().contains("field") || matches!(e, ConfigError::PortMappings(_)),
                    "{e}"
                ),
            }
            Ok(())
        },
    );
}

//! Integration test with a real ovs-vswitchd, run inside a network namespace the test creates
//! (never the host's), userspace datapath only.

use std::process::Command;
use std::time::Duration;

use ovsdb::testing::{OvsdbServer, Vswitchd, random_suffix};
use ovsdb::vswitch::{self, Bridge, Interface, Port, Table};
use ovsdb::{Client, Condition, Datum, Error, Mutation, Operation, Row};

const DB: &str = vswitch::DB;
const LONG: Duration = Duration::from_secs(20);

/// Ops adding a netdev bridge with its internal port, named `name`.
fn add_bridge_ops(name: &str) -> Vec<Operation> {
    let iface = Interface {
        name: name.into(),
        kind: "internal".into(),
        ..Default::default()
    };
    let port = Port {
        name: name.into(),
        ..Default::default()
    };
    let bridge = Bridge {
        name: name.into(),
        datapath_type: "netdev".into(),
        ..Default::default()
    };
    vec![
        Operation::insert("Interface", iface.to_row()).uuid_name("i"),
        Operation::insert(
            "Port",
            port.to_row().with("interfaces", Datum::named_uuid("i")),
        )
        .uuid_name("p"),
        Operation::insert(
            "Bridge",
            bridge.to_row().with("ports", Datum::named_uuid("p")),
        )
        .uuid_name("b"),
        Operation::mutate(
            "Open_vSwitch",
            vec![],
            vec![Mutation::insert("bridges", Datum::named_uuid("b"))],
        ),
    ]
}

/// Ops adding port `name` (one interface of `kind`, with `options`) to bridge `bridge`.
fn add_port_ops(bridge: &str, name: &str, kind: &str, options: &[(&str, &str)]) -> Vec<Operation> {
    let iface = Row::new()
        .with("name", name)
        .with("type", kind)
        .with("options", Datum::map(options.iter().copied()));
    vec![
        Operation::insert("Interface", iface).uuid_name("i"),
        Operation::insert(
            "Port",
            Row::new()
                .with("name", name)
                .with("interfaces", Datum::named_uuid("i")),
        )
        .uuid_name("p"),
        Operation::mutate(
            "Bridge",
            vec![Condition::eq("name", bridge)],
            vec![Mutation::insert("ports", Datum::named_uuid("p"))],
        ),
    ]
}

fn link_exists(netns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ip", "link", "show", dev])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn vswitchd_applies_changes_and_reports_ofports() {
    let server = OvsdbServer::start().expect("ovsdb-server");
    server.vsctl(&["init"]).expect("ovs-vsctl init");
    let vswitchd = Vswitchd::start(&server, "ovs-").expect("ovs-vswitchd in a netns");
    let client = Client::connect(&server.unix_addr()).await.expect("connect");

    // A bare bump: returns once ovs-vswitchd has read the database and applied it.
    let mut ops = Vec::new();
    let next = vswitch::wait::bump_next_cfg(&mut ops);
    let r = client.transact(DB, ops).await.expect("bump");
    let target = next.target(&r).expect("target");
    let cur = client.wait_cur_cfg(target, LONG).await.expect("cur_cfg");
    assert!(cur >= target);

    // A bridge with its internal port, applied and confirmed in one call.
    let br = format!("t{}", random_suffix());
    let r = client
        .transact_and_wait(add_bridge_ops(&br), LONG)
        .await
        .expect("add bridge and wait");
    assert_eq!(r.len(), 4, "only the caller's results");
    let local = client
        .wait_interface_ofport(&br, LONG)
        .await
        .expect("bridge's local port");
    assert_eq!(local, 65534, "OFPP_LOCAL");
    assert!(
        link_exists(vswitchd.netns(), &br),
        "tap device in the namespace"
    );

    // A second internal port gets a regular OpenFlow port number.
    let p = format!("i{}", random_suffix());
    client
        .transact(DB, add_port_ops(&br, &p, "internal", &[]))
        .await
        .expect("add internal port");
    let ofport = client
        .wait_interface_ofport(&p, LONG)
        .await
        .expect("ofport");
    assert!((1..65280).contains(&ofport), "{ofport}");
    assert!(link_exists(vswitchd.netns(), &p));

    // A system interface that does not exist: ovs-vswitchd sets its error column.
    let missing = format!("x{}", random_suffix());
    client
        .transact(DB, add_port_ops(&br, &missing, "", &[]))
        .await
        .expect("add missing device");
    match client.wait_interface_ofport(&missing, LONG).await {
        Err(Error::Interface { name, error }) => {
            assert_eq!(name, missing);
            assert!(error.contains(&missing), "{error}");
        }
        other => panic!("expected an interface error, got {other:?}"),
    }

    // The typed row agrees.
    let r = client
        .transact(
            DB,
            vec![Operation::select(
                "Interface",
                vec![Condition::eq("name", p.as_str())],
            )],
        )
        .await
        .expect("select");
    let iface = Interface::from_select(r[0].rows.as_deref().unwrap_or_default()).expect("typed");
    assert_eq!(iface[0].ofport, Some(ofport));
    assert!(iface[0].mtu.is_some(), "ovs-vswitchd fills mtu");

    // Nothing waits forever: an interface nobody creates times out.
    let err = client
        .wait_interface_ofport("nonexistent", Duration::from_millis(300))
        .await
        .expect_err("times out");
    assert!(err.is_timeout(), "{err}");
}

//! The typed rows. Each struct has `Default` (nil uuid, empty columns) for building inserts.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{Columns, Table};
use crate::datum::{Datum, Row};
use crate::error::Result;

/// The root row (there is one).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenVSwitch {
    pub uuid: Uuid,
    pub bridges: Vec<Uuid>,
    /// Bumped by clients that want ovs-vswitchd to report when it has applied their change.
    pub next_cfg: i64,
    /// Set by ovs-vswitchd to the `next_cfg` it has applied.
    pub cur_cfg: i64,
    pub external_ids: BTreeMap<String, String>,
}

impl Table for OpenVSwitch {
    const NAME: &'static str = "Open_vSwitch";
    const COLUMNS: &'static [&'static str] = &["bridges", "next_cfg", "cur_cfg", "external_ids"];

    fn from_row(uuid: Uuid, row: &Row) -> Result<Self> {
        let c = Columns {
            table: Self::NAME,
            uuid,
            row,
        };
        Ok(OpenVSwitch {
            uuid,
            bridges: c.uuids("bridges")?,
            next_cfg: c.integer("next_cfg")?,
            cur_cfg: c.integer("cur_cfg")?,
            external_ids: c.string_map("external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        Row::new()
            .with("bridges", self.bridges.as_slice())
            .with("next_cfg", self.next_cfg)
            .with("external_ids", &self.external_ids)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bridge {
    pub uuid: Uuid,
    pub name: String,
    pub ports: Vec<Uuid>,
    pub controller: Vec<Uuid>,
    /// "standalone" or "secure"; unset means standalone.
    pub fail_mode: Option<String>,
    /// "system" (kernel) or "netdev" (userspace); empty means system.
    pub datapath_type: String,
    pub external_ids: BTreeMap<String, String>,
    pub other_config: BTreeMap<String, String>,
}

impl Table for Bridge {
    const NAME: &'static str = "Bridge";
    const COLUMNS: &'static [&'static str] = &[
        "name",
        "ports",
        "controller",
        "fail_mode",
        "datapath_type",
        "external_ids",
        "other_config",
    ];

    fn from_row(uuid: Uuid, row: &Row) -> Result<Self> {
        let c = Columns {
            table: Self::NAME,
            uuid,
            row,
        };
        Ok(Bridge {
            uuid,
            name: c.string("name")?,
            ports: c.uuids("ports")?,
            controller: c.uuids("controller")?,
            fail_mode: c.opt_string("fail_mode")?,
            datapath_type: c.string("datapath_type")?,
            external_ids: c.string_map("external_ids")?,
            other_config: c.string_map("other_config")?,
        })
    }

    fn to_row(&self) -> Row {
        Row::new()
            .with("name", &self.name)
            .with("ports", self.ports.as_slice())
            .with("controller", self.controller.as_slice())
            .with("fail_mode", Datum::optional(self.fail_mode.as_deref()))
            .with("datapath_type", &self.datapath_type)
            .with("external_ids", &self.external_ids)
            .with("other_config", &self.other_config)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Port {
    pub uuid: Uuid,
    pub name: String,
    pub interfaces: Vec<Uuid>,
    /// Protected ports never forward to each other.
    pub protected: bool,
    /// Access VLAN, 0-4095.
    pub tag: Option<i64>,
    pub external_ids: BTreeMap<String, String>,
}

impl Table for Port {
    const NAME: &'static str = "Port";
    const COLUMNS: &'static [&'static str] =
        &["name", "interfaces", "protected", "tag", "external_ids"];

    fn from_row(uuid: Uuid, row: &Row) -> Result<Self> {
        let c = Columns {
            table: Self::NAME,
            uuid,
            row,
        };
        Ok(Port {
            uuid,
            name: c.string("name")?,
            interfaces: c.uuids("interfaces")?,
            protected: c.boolean("protected")?,
            tag: c.opt_integer("tag")?,
            external_ids: c.string_map("external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        Row::new()
            .with("name", &self.name)
            .with("interfaces", self.interfaces.as_slice())
            .with("protected", self.protected)
            .with("tag", Datum::optional(self.tag))
            .with("external_ids", &self.external_ids)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Interface {
    pub uuid: Uuid,
    pub name: String,
    /// The `type` column: "" (system), "internal", "vxlan", "patch", ...
    pub kind: String,
    pub options: BTreeMap<String, String>,
    /// Set by ovs-vswitchd: the OpenFlow port number, -1 on failure.
    pub ofport: Option<i64>,
    /// Set by ovs-vswitchd: the kernel's ifindex of the interface's network device, when it
    /// has one (0 or absent otherwise).
    pub ifindex: Option<i64>,
    pub mtu_request: Option<i64>,
    /// Set by ovs-vswitchd.
    pub mtu: Option<i64>,
    /// Set by ovs-vswitchd when it cannot configure the interface.
    pub error: Option<String>,
    pub external_ids: BTreeMap<String, String>,
}

impl Table for Interface {
    const NAME: &'static str = "Interface";
    const COLUMNS: &'static [&'static str] = &[
        "name",
        "type",
        "options",
        "ofport",
        "ifindex",
        "mtu_request",
        "mtu",
        "error",
        "external_ids",
    ];

    fn from_row(uuid: Uuid, row: &Row) -> Result<Self> {
        let c = Columns {
            table: Self::NAME,
            uuid,
            row,
        };
        Ok(Interface {
            uuid,
            name: c.string("name")?,
            kind: c.string("type")?,
            options: c.string_map("options")?,
            ofport: c.opt_integer("ofport")?,
            ifindex: c.opt_integer("ifindex")?,
            mtu_request: c.opt_integer("mtu_request")?,
            mtu: c.opt_integer("mtu")?,
            error: c.opt_string("error")?,
            external_ids: c.string_map("external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        Row::new()
            .with("name", &self.name)
            .with("type", &self.kind)
            .with("options", &self.options)
            .with("mtu_request", Datum::optional(self.mtu_request))
            .with("external_ids", &self.external_ids)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Controller {
    pub uuid: Uuid,
    /// e.g. "tcp:127.0.0.1:6653" or "punix:/run/ctl.sock".
    pub target: String,
    /// Set by ovs-vswitchd.
    pub is_connected: bool,
    pub external_ids: BTreeMap<String, String>,
}

impl Table for Controller {
    const NAME: &'static str = "Controller";
    const COLUMNS: &'static [&'static str] = &["target", "is_connected", "external_ids"];

    fn from_row(uuid: Uuid, row: &Row) -> Result<Self> {
        let c = Columns {
            table: Self::NAME,
            uuid,
            row,
        };
        Ok(Controller {
            uuid,
            target: c.string("target")?,
            is_connected: c.boolean("is_connected")?,
            external_ids: c.string_map("external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        Row::new()
            .with("target", &self.target)
            .with("external_ids", &self.external_ids)
    }
}

/// The `SSL` table: the key, certificate and CA that ovs-vswitchd uses for `ssl:` controller
/// and manager connections, pointed at by the root row's `ssl` column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ssl {
    pub uuid: Uuid,
    pub private_key: String,
    pub certificate: String,
    pub ca_cert: String,
    pub external_ids: BTreeMap<String, String>,
}

impl Table for Ssl {
    const NAME: &'static str = "SSL";
    const COLUMNS: &'static [&'static str] =
        &["private_key", "certificate", "ca_cert", "external_ids"];

    fn from_row(uuid: Uuid, row: &Row) -> Result<Self> {
        let c = Columns {
            table: Self::NAME,
            uuid,
            row,
        };
        Ok(Ssl {
            uuid,
            private_key: c.string("private_key")?,
            certificate: c.string("certificate")?,
            ca_cert: c.string("ca_cert")?,
            external_ids: c.string_map("external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        Row::new()
            .with("private_key", &self.private_key)
            .with("certificate", &self.certificate)
            .with("ca_cert", &self.ca_cert)
            .with("external_ids", &self.external_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use serde_json::json;

    const U1: &str = "73c1bee0-d025-4cd6-9d5b-56c4f60bb1fe";
    const U2: &str = "8517b7aa-66c7-49b3-af7b-8655c36458dc";

    fn u(s: &str) -> Uuid {
        Uuid::parse_str(s).expect("uuid")
    }

    fn row(v: serde_json::Value) -> Row {
        Row::from_json(&v).expect("row")
    }

    #[test]
    fn decodes_rows_as_the_server_sends_them() {
        let ids = BTreeMap::from([("owner".to_string(), "me".to_string())]);
        let b = Bridge::from_selected(&row(json!({
            "_uuid": ["uuid", U1], "name": "br0", "ports": ["set", [["uuid", U1], ["uuid", U2]]],
            "controller": ["set", []], "fail_mode": "secure", "datapath_type": "netdev",
            "external_ids": ["map", [["owner", "me"]]], "other_config": ["map", []],
            "stp_enable": false
        })))
        .expect("bridge");
        assert_eq!(
            b,
            Bridge {
                uuid: u(U1),
                name: "br0".into(),
                ports: vec![u(U1), u(U2)],
                controller: vec![],
                fail_mode: Some("secure".into()),
                datapath_type: "netdev".into(),
                external_ids: ids.clone(),
                other_config: BTreeMap::new(),
            }
        );

        let p = Port::from_row(
            u(U2),
            &row(json!({
                "name": "p0", "interfaces": ["uuid", U1], "protected": true, "tag": ["set", []],
                "external_ids": ["map", []]
            })),
        )
        .expect("port");
        assert_eq!(
            (p.interfaces, p.protected, p.tag),
            (vec![u(U1)], true, None)
        );

        let i = Interface::from_row(u(U1), &row(json!({
            "name": "p0", "type": "internal", "options": ["map", []], "ofport": 3, "ifindex": 17,
            "mtu_request": ["set", []], "mtu": 1500, "error": ["set", []], "external_ids": ["map", []]
        })))
        .expect("interface");
        assert_eq!(
            (i.kind.as_str(), i.ofport, i.ifindex, i.mtu, i.error),
            ("internal", Some(3), Some(17), Some(1500), None)
        );

        let c = Controller::from_row(
            u(U1),
            &row(json!({
                "target": "tcp:127.0.0.1:6653", "is_connected": false, "external_ids": ["map", []]
            })),
        )
        .expect("controller");
        assert!(!c.is_connected);

        let o = OpenVSwitch::from_row(
            u(U1),
            &row(json!({
                "bridges": ["uuid", U2], "next_cfg": 4, "cur_cfg": 3, "external_ids": ["map", []]
            })),
        )
        .expect("root");
        assert_eq!((o.bridges, o.next_cfg, o.cur_cfg), (vec![u(U2)], 4, 3));
    }

    #[test]
    fn malformed_rows_name_table_and_column() {
        let good = json!({"name": "p0", "interfaces": ["set", []], "protected": false,
                          "tag": 5, "external_ids": ["map", []]});
        let cases = [
            ("name", json!(1)),
            ("interfaces", json!(["set", ["x"]])),
            ("protected", json!("yes")),
            ("tag", json!(["set", [1, 2]])),
            ("external_ids", json!(["map", [[1, "a"]]])),
        ];
        for (col, bad) in cases {
            let mut v = good.clone();
            v[col] = bad;
            match Port::from_row(u(U1), &row(v)) {
                Err(Error::Row {
                    table: "Port",
                    column,
                    uuid,
                    ..
                }) => {
                    assert_eq!((column.as_str(), uuid), (col, Some(u(U1))));
                }
                other => panic!("{col}: {other:?}"),
            }
        }
        let mut missing = good.clone();
        missing.as_object_mut().expect("object").remove("protected");
        let err = Port::from_row(u(U1), &row(missing)).expect_err("missing column");
        assert!(err.to_string().contains("\"protected\": missing"), "{err}");
        assert!(Port::from_selected(&row(good)).is_err(), "no _uuid");
    }

    #[test]
    fn to_row_round_trips_client_columns() {
        let b = Bridge {
            uuid: u(U1),
            name: "br0".into(),
            ports: vec![u(U2)],
            fail_mode: Some("standalone".into()),
            datapath_type: "netdev".into(),
            ..Default::default()
        };
        assert_eq!(Bridge::from_row(u(U1), &b.to_row()).expect("bridge"), b);
        let r = b.to_row().to_json();
        assert_eq!(r["external_ids"], json!(["map", []]));
        assert_eq!(r["ports"], json!(["uuid", U2]));

        let p = Port {
            name: "p".into(),
            tag: Some(7),
            protected: true,
            ..Default::default()
        };
        assert_eq!(Port::from_row(Uuid::nil(), &p.to_row()).expect("port"), p);

        let i = Interface {
            name: "i".into(),
            kind: "internal".into(),
            mtu_request: Some(1450),
            ..Default::default()
        };
        let r = i.to_row();
        assert!(r.get("ofport").is_none() && r.get("error").is_none() && r.get("mtu").is_none());
        assert_eq!(r.get("type"), Some(&Datum::from("internal")));

        let c = Controller {
            target: "punix:/x".into(),
            ..Default::default()
        };
        assert!(c.to_row().get("is_connected").is_none());
        let o = OpenVSwitch {
            next_cfg: 2,
            ..Default::default()
        };
        assert!(o.to_row().get("cur_cfg").is_none());
    }
}

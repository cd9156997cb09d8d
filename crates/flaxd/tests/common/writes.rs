//! Counting the configuration writes made to one OVSDB: a `monitor` on the columns clients
//! write (not those ovs-vswitchd keeps up to date, like `ofport` or `statistics`), so that a
//! test can prove that a daemon changed nothing.

use std::time::Duration;

/// The client-written columns of the tables Linen touches.
const CONFIG_COLUMNS: &[(&str, &[&str])] = &[
    (
        "Open_vSwitch",
        &["bridges", "next_cfg", "external_ids", "other_config"],
    ),
    (
        "Bridge",
        &[
            "name",
            "ports",
            "controller",
            "fail_mode",
            "datapath_type",
            "protocols",
            "external_ids",
            "other_config",
        ],
    ),
    (
        "Port",
        &[
            "name",
            "interfaces",
            "protected",
            "tag",
            "trunks",
            "external_ids",
            "other_config",
        ],
    ),
    (
        "Interface",
        &[
            "name",
            "type",
            "options",
            "mtu_request",
            "external_ids",
            "other_config",
        ],
    ),
];

/// A live monitor of the configuration of the OVSDB at `addr`, from now on.
pub struct WriteCounter {
    client: ovsdb::Client,
    monitor: ovsdb::Monitor,
}

impl WriteCounter {
    pub async fn start(addr: &str) -> WriteCounter {
        let client = ovsdb::Client::connect(addr).await.expect("OVSDB");
        let select = ovsdb::MonitorSelect {
            initial: false,
            ..Default::default()
        };
        let requests = CONFIG_COLUMNS
            .iter()
            .map(|(t, cols)| (*t, ovsdb::MonitorRequest::columns(*cols).select(select)));
        let monitor = client
            .monitor(ovsdb::vswitch::DB, requests)
            .await
            .expect("monitor");
        WriteCounter { client, monitor }
    }

    /// Every committed change seen so far, one entry per transaction, as "table: rows".
    /// An `echo` first: ovsdb-server answers it after every update it queued before it.
    pub async fn changes(&mut self) -> Vec<String> {
        self.client.echo().await.expect("echo");
        let mut seen = Vec::new();
        while let Ok(batch) =
            tokio::time::timeout(Duration::from_millis(50), self.monitor.recv()).await
        {
            let batch = batch.expect("monitor update");
            seen.push(
                batch
                    .iter()
                    .map(|(table, rows)| format!("{table}: {rows:?}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        seen
    }
}

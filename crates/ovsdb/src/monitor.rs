//! RFC 7047 §4.1.5 `monitor`: requests, table updates, and the [`Monitor`] handle.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::client::Client;
use crate::datum::Row;
use crate::error::{Error, Result};

/// What to monitor in one table.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorRequest {
    /// `None` monitors every column.
    pub columns: Option<Vec<String>>,
    pub select: MonitorSelect,
}

/// Which kinds of change to report (RFC 7047 `<monitor-select>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSelect {
    pub initial: bool,
    pub insert: bool,
    pub delete: bool,
    pub modify: bool,
}

impl Default for MonitorSelect {
    fn default() -> Self {
        MonitorSelect {
            initial: true,
            insert: true,
            delete: true,
            modify: true,
        }
    }
}

impl MonitorRequest {
    /// Every column, every kind of change, with the initial contents.
    pub fn all() -> Self {
        MonitorRequest {
            columns: None,
            select: MonitorSelect::default(),
        }
    }

    /// These columns, every kind of change, with the initial contents.
    pub fn columns<S: AsRef<str>>(cols: impl IntoIterator<Item = S>) -> Self {
        MonitorRequest {
            columns: Some(cols.into_iter().map(|c| c.as_ref().to_string()).collect()),
            select: MonitorSelect::default(),
        }
    }

    pub fn select(mut self, select: MonitorSelect) -> Self {
        self.select = select;
        self
    }

    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        if let Some(c) = &self.columns {
            o.insert("columns".into(), json!(c));
        }
        let s = self.select;
        o.insert(
            "select".into(),
            json!({"initial": s.initial, "insert": s.insert, "delete": s.delete, "modify": s.modify}),
        );
        Value::Object(o)
    }
}

/// One row's change. Insert: only `new`. Delete: only `old`. Modify: `new` holds every
/// monitored column, `old` only the columns that changed, with their previous values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowUpdate {
    pub old: Option<Row>,
    pub new: Option<Row>,
}

/// Changed rows of one table, by uuid.
pub type TableUpdate = BTreeMap<Uuid, RowUpdate>;

/// Changed rows, by table name.
pub type TableUpdates = BTreeMap<String, TableUpdate>;

/// Decodes an RFC 7047 `<table-updates>` object.
pub fn table_updates_from_json(value: &Value) -> Result<TableUpdates> {
    let Value::Object(tables) = value else {
        return Err(Error::decode(
            "table updates",
            format!("expected an object, got {value}"),
        ));
    };
    let mut out = TableUpdates::new();
    for (table, rows) in tables {
        let Value::Object(rows) = rows else {
            return Err(Error::decode(
                format!("updates of table {table}"),
                "expected an object",
            ));
        };
        let mut tu = TableUpdate::new();
        for (uuid, update) in rows {
            let what = || format!("update of {table} row {uuid}");
            let u = Uuid::parse_str(uuid).map_err(|e| Error::decode(what(), e.to_string()))?;
            let Value::Object(update) = update else {
                return Err(Error::decode(what(), "expected an object"));
            };
            let row = |key: &str| -> Result<Option<Row>> {
                update
                    .get(key)
                    .map(Row::from_json)
                    .transpose()
                    .map_err(|e| Error::decode(what(), e.to_string()))
            };
            tu.insert(
                u,
                RowUpdate {
                    old: row("old")?,
                    new: row("new")?,
                },
            );
        }
        out.insert(table.clone(), tu);
    }
    Ok(out)
}

/// A live monitor. Later changes arrive through [`Monitor::recv`]; the initial contents are in
/// [`Monitor::initial`]. Dropping it stops the routing and sends `monitor_cancel` without waiting.
///
/// Updates queue without bound until received, so a monitor nobody reads grows in memory.
#[derive(Debug)]
pub struct Monitor {
    pub(crate) id: String,
    pub(crate) initial: TableUpdates,
    pub(crate) rx: mpsc::UnboundedReceiver<Result<TableUpdates>>,
    pub(crate) client: Client,
    pub(crate) done: bool,
}

impl Monitor {
    /// The monitor id used on the wire.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The table contents when the monitor started (if `select.initial` was set).
    pub fn initial(&self) -> &TableUpdates {
        &self.initial
    }

    /// Takes the initial contents, leaving an empty set in their place.
    pub fn take_initial(&mut self) -> TableUpdates {
        std::mem::take(&mut self.initial)
    }

    /// The next batch of changes (one committed transaction). Fails with [`Error::Closed`] once
    /// the connection is gone (or the monitor was cancelled), and keeps failing so after that.
    /// A notification that cannot be decoded gives an [`Error::Decode`]; later ones still arrive.
    pub async fn recv(&mut self) -> Result<TableUpdates> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(Error::Closed),
        }
    }

    /// Cancels the monitor on the server and waits for its answer.
    pub async fn cancel(mut self) -> Result<()> {
        self.done = true;
        self.client.monitor_cancel(&self.id).await
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if !self.done {
            self.client.drop_monitor(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "73c1bee0-d025-4cd6-9d5b-56c4f60bb1fe";

    #[test]
    fn requests_encode() {
        let cases = [
            (
                MonitorRequest::all(),
                json!({"select": {"initial": true, "insert": true, "delete": true, "modify": true}}),
            ),
            (
                MonitorRequest::columns(["name", "ofport"]).select(MonitorSelect {
                    initial: false,
                    ..MonitorSelect::default()
                }),
                json!({"columns": ["name", "ofport"],
                       "select": {"initial": false, "insert": true, "delete": true, "modify": true}}),
            ),
        ];
        for (req, wire) in cases {
            assert_eq!(req.to_json(), wire);
        }
    }

    #[test]
    fn updates_decode() {
        let u1 = Uuid::parse_str(U1).expect("uuid");
        // Shape of a real ovsdb-server modify notification.
        let wire = json!({"Bridge": {U1: {"old": {"ports": ["set", []]},
                                          "new": {"name": "br0", "ports": ["uuid", U1]}}}});
        let tu = table_updates_from_json(&wire).expect("decodes");
        let ru = &tu["Bridge"][&u1];
        assert_eq!(
            ru.old,
            Some(Row::new().with("ports", crate::Datum::empty_set()))
        );
        assert_eq!(
            ru.new,
            Some(Row::new().with("name", "br0").with("ports", u1))
        );

        let bad = [
            json!([]),
            json!({"Bridge": []}),
            json!({"Bridge": {"nope": {}}}),
            json!({"Bridge": {U1: 1}}),
            json!({"Bridge": {U1: {"new": 1}}}),
        ];
        for b in bad {
            assert!(table_updates_from_json(&b).is_err(), "{b}");
        }
    }
}

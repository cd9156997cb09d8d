//! Waiting for ovs-vswitchd to apply a change, with no fixed sleeps: a client bumps
//! `Open_vSwitch.next_cfg` in its transaction, and ovs-vswitchd sets `cur_cfg` to that value once
//! it has reconfigured. A monitor sees `cur_cfg` change, so nothing polls.

use std::time::Duration;

use tokio::time::Instant;

use super::DB;
use crate::client::Client;
use crate::datum::Datum;
use crate::error::{Error, Result};
use crate::monitor::{MonitorRequest, TableUpdates};
use crate::ops::{Mutation, OpResult, Operation};

/// Where to find the new `next_cfg` in the results of a transaction built with
/// [`bump_next_cfg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextCfg {
    select_index: usize,
}

/// Appends to `ops` a mutate `Open_vSwitch.next_cfg += 1` and a select of `next_cfg`, so the
/// transaction's results tell which `cur_cfg` to wait for ([`NextCfg::target`]).
pub fn bump_next_cfg(ops: &mut Vec<Operation>) -> NextCfg {
    ops.push(Operation::mutate(
        "Open_vSwitch",
        vec![],
        vec![Mutation::add("next_cfg", 1)],
    ));
    ops.push(Operation::select("Open_vSwitch", vec![]).columns(["next_cfg"]));
    NextCfg {
        select_index: ops.len() - 1,
    }
}

impl NextCfg {
    /// The `next_cfg` value the transaction committed. Fails if there is no root row.
    pub fn target(&self, results: &[OpResult]) -> Result<i64> {
        let rows = results
            .get(self.select_index)
            .and_then(|r| r.rows.as_ref())
            .ok_or_else(|| Error::protocol("transact reply", "no rows for the next_cfg select"))?;
        let row = rows.first().ok_or_else(|| Error::MissingRow {
            table: "Open_vSwitch",
            what: "bumping next_cfg".into(),
        })?;
        row.get("next_cfg")
            .and_then(Datum::as_integer)
            .ok_or_else(|| Error::Row {
                table: "Open_vSwitch",
                uuid: row.uuid(),
                column: "next_cfg".into(),
                reason: "missing or not an integer".into(),
            })
    }
}

/// The highest `cur_cfg` in the updates, if it reaches `target`.
fn cur_cfg_reached(updates: &TableUpdates, target: i64) -> Option<i64> {
    updates
        .get("Open_vSwitch")?
        .values()
        .filter_map(|u| u.new.as_ref()?.get("cur_cfg")?.as_integer())
        .filter(|&cur| cur >= target)
        .max()
}

/// The outcome for interface `name`, once there is one: its ofport, or its error.
fn interface_outcome(updates: &TableUpdates, name: &str) -> Option<Result<i64>> {
    for update in updates.get("Interface")?.values() {
        let Some(row) = &update.new else { continue };
        if row.get("name").and_then(Datum::as_str) != Some(name) {
            continue;
        }
        if let Some(ofport) = row.get("ofport").and_then(Datum::as_integer)
            && ofport > 0
        {
            return Some(Ok(ofport));
        }
        if let Some(error) = row.get("error").and_then(Datum::as_str) {
            return Some(Err(Error::Interface {
                name: name.to_string(),
                error: error.to_string(),
            }));
        }
    }
    None
}

impl Client {
    /// Waits until ovs-vswitchd has applied configuration `target` (`cur_cfg >= target`) and
    /// returns the `cur_cfg` seen. Fails with [`Error::Timeout`] after `timeout` (e.g. when
    /// ovs-vswitchd is not running), or [`Error::Closed`].
    pub async fn wait_cur_cfg(&self, target: i64, timeout: Duration) -> Result<i64> {
        let wait = async {
            let mut mon = self
                .monitor(DB, [("Open_vSwitch", MonitorRequest::columns(["cur_cfg"]))])
                .await?;
            if let Some(cur) = cur_cfg_reached(mon.initial(), target) {
                return Ok(cur);
            }
            loop {
                if let Some(cur) = cur_cfg_reached(&mon.recv().await?, target) {
                    return Ok(cur);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("waiting for ovs-vswitchd cur_cfg >= {target}"),
                after: timeout,
            })?
    }

    /// Waits until the Interface row `name` has a positive `ofport` and returns it. If
    /// ovs-vswitchd sets the row's `error` column instead, fails with [`Error::Interface`]
    /// carrying that text; after `timeout`, with [`Error::Timeout`].
    pub async fn wait_interface_ofport(&self, name: &str, timeout: Duration) -> Result<i64> {
        let wait = async {
            let req = MonitorRequest::columns(["name", "ofport", "error"]);
            let mut mon = self.monitor(DB, [("Interface", req)]).await?;
            if let Some(outcome) = interface_outcome(mon.initial(), name) {
                return outcome;
            }
            loop {
                if let Some(outcome) = interface_outcome(&mon.recv().await?, name) {
                    return outcome;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("waiting for an ofport on interface {name}"),
                after: timeout,
            })?
    }

    /// Runs `ops` on the `Open_vSwitch` database with a `next_cfg` bump, then waits until
    /// ovs-vswitchd has applied it. Returns one result per operation of `ops`. `timeout` bounds
    /// the whole call; on expiry the change may still have been committed.
    pub async fn transact_and_wait(
        &self,
        mut ops: Vec<Operation>,
        timeout: Duration,
    ) -> Result<Vec<OpResult>> {
        let deadline = Instant::now() + timeout;
        let n = ops.len();
        let next = bump_next_cfg(&mut ops);
        let mut results = self.transact_timeout(DB, ops, timeout).await?;
        let target = next.target(&results)?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.wait_cur_cfg(target, left).await?;
        results.truncate(n);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::Row;
    use crate::monitor::RowUpdate;
    use serde_json::json;
    use uuid::Uuid;

    fn updates(table: &str, rows: Vec<Row>) -> TableUpdates {
        let tu = rows
            .into_iter()
            .map(|r| {
                (
                    Uuid::new_v4(),
                    RowUpdate {
                        old: None,
                        new: Some(r),
                    },
                )
            })
            .collect();
        TableUpdates::from([(table.to_string(), tu)])
    }

    #[test]
    fn bump_appends_mutate_and_select() {
        let mut ops = vec![Operation::comment("caller")];
        let next = bump_next_cfg(&mut ops);
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[1].to_json(),
            json!({"op":"mutate","table":"Open_vSwitch","where":[],"mutations":[["next_cfg","+=",1]]})
        );
        assert_eq!(
            ops[2].to_json(),
            json!({"op":"select","table":"Open_vSwitch","where":[],"columns":["next_cfg"]})
        );
        let select = |rows| OpResult {
            rows: Some(rows),
            ..Default::default()
        };
        let ok = vec![
            OpResult::default(),
            OpResult::default(),
            select(vec![Row::new().with("next_cfg", 7)]),
        ];
        assert_eq!(next.target(&ok).expect("target"), 7);

        let no_root = vec![OpResult::default(), OpResult::default(), select(vec![])];
        assert!(matches!(
            next.target(&no_root),
            Err(Error::MissingRow { .. })
        ));
        let bad = vec![
            OpResult::default(),
            OpResult::default(),
            select(vec![Row::new().with("next_cfg", "x")]),
        ];
        assert!(matches!(next.target(&bad), Err(Error::Row { .. })));
        assert!(next.target(&[]).is_err());
    }

    #[test]
    fn cur_cfg_reaches_target() {
        let cases = [(3, 4, None), (4, 4, Some(4)), (5, 4, Some(5))];
        for (cur, target, want) in cases {
            let u = updates("Open_vSwitch", vec![Row::new().with("cur_cfg", cur)]);
            assert_eq!(
                cur_cfg_reached(&u, target),
                want,
                "cur {cur} target {target}"
            );
        }
        assert_eq!(cur_cfg_reached(&TableUpdates::new(), 0), None);
    }

    #[test]
    fn interface_outcomes() {
        let iface = |name: &str, ofport: Datum, error: Datum| {
            Row::new()
                .with("name", name)
                .with("ofport", ofport)
                .with("error", error)
        };
        let none = Datum::empty_set();
        let cases: Vec<(Row, Option<std::result::Result<i64, &str>>)> = vec![
            (iface("p0", Datum::from(3), none.clone()), Some(Ok(3))),
            (iface("p0", none.clone(), none.clone()), None),
            (iface("p0", Datum::from(-1), none.clone()), None),
            (
                iface("p0", Datum::from(-1), Datum::from("no such device")),
                Some(Err("no such device")),
            ),
            (iface("other", Datum::from(3), none.clone()), None),
        ];
        for (row, want) in cases {
            let got = interface_outcome(&updates("Interface", vec![row.clone()]), "p0");
            let got = got.map(|r| {
                r.map_err(|e| match e {
                    Error::Interface { error, .. } => error,
                    other => other.to_string(),
                })
            });
            assert_eq!(got, want.map(|w| w.map_err(str::to_string)), "{row:?}");
        }
    }
}

//! Typed rows for the tables of the `Open_vSwitch` database (vswitch.ovsschema) that a switch
//! integration needs, and helpers to wait for ovs-vswitchd (see [`wait`]).
//!
//! Only the columns listed in each struct are read; `from_row` fails with [`Error::Row`] if one
//! is missing or has the wrong type, so select or monitor at least [`Table::COLUMNS`].
//!
//! `to_row` writes the columns a client owns, for an `insert`; columns that ovs-vswitchd writes
//! (`ofport`, `mtu`, `error`, `is_connected`, `cur_cfg`) are left out. To point at a row inserted
//! in the same transaction, override the reference column with [`Datum::named_uuid`].

mod rows;
pub mod wait;

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::datum::{Datum, Row};
use crate::error::{Error, Result};

pub use rows::{Bridge, Controller, Interface, OpenVSwitch, Port, Ssl};
pub use wait::NextCfg;

/// The database name.
pub const DB: &str = "Open_vSwitch";

/// A typed row of one table.
pub trait Table: Sized {
    /// The table name.
    const NAME: &'static str;
    /// The columns `from_row` reads.
    const COLUMNS: &'static [&'static str];

    /// Decodes a row whose uuid is known (a monitor update is keyed by it).
    fn from_row(uuid: Uuid, row: &Row) -> Result<Self>;

    /// The client-owned columns, for an `insert`.
    fn to_row(&self) -> Row;

    /// Decodes a row returned by `select`, which carries its uuid in `_uuid`.
    fn from_selected(row: &Row) -> Result<Self> {
        let uuid = row.uuid().ok_or_else(|| Error::Row {
            table: Self::NAME,
            uuid: None,
            column: "_uuid".into(),
            reason: "missing or not a uuid".into(),
        })?;
        Self::from_row(uuid, row)
    }

    /// Decodes every row of a `select` result.
    fn from_select(rows: &[Row]) -> Result<Vec<Self>> {
        rows.iter().map(Self::from_selected).collect()
    }
}

/// Reads typed columns from a row, naming the table, row and column in every error.
pub(crate) struct Columns<'a> {
    pub table: &'static str,
    pub uuid: Uuid,
    pub row: &'a Row,
}

impl<'a> Columns<'a> {
    fn err(&self, column: &str, reason: impl Into<String>) -> Error {
        Error::Row {
            table: self.table,
            uuid: Some(self.uuid),
            column: column.to_string(),
            reason: reason.into(),
        }
    }

    fn get(&self, column: &str) -> Result<&'a Datum> {
        self.row
            .get(column)
            .ok_or_else(|| self.err(column, "missing"))
    }

    fn typed<T>(&self, column: &str, want: &str, f: impl Fn(&'a Datum) -> Option<T>) -> Result<T> {
        let d = self.get(column)?;
        f(d).ok_or_else(|| self.err(column, format!("expected {want}, got {}", d.to_json())))
    }

    pub fn string(&self, column: &str) -> Result<String> {
        self.typed(column, "a string", |d| d.as_str().map(str::to_string))
    }

    pub fn integer(&self, column: &str) -> Result<i64> {
        self.typed(column, "an integer", Datum::as_integer)
    }

    pub fn boolean(&self, column: &str) -> Result<bool> {
        self.typed(column, "a boolean", Datum::as_bool)
    }

    /// A 0-or-1 set of strings.
    pub fn opt_string(&self, column: &str) -> Result<Option<String>> {
        self.typed(column, "an optional string", |d| match d.as_set()? {
            [] => Some(None),
            [a] => a.as_str().map(|s| Some(s.to_string())),
            _ => None,
        })
    }

    /// A 0-or-1 set of integers.
    pub fn opt_integer(&self, column: &str) -> Result<Option<i64>> {
        self.typed(column, "an optional integer", |d| match d.as_set()? {
            [] => Some(None),
            [a] => a.as_integer().map(Some),
            _ => None,
        })
    }

    pub fn uuids(&self, column: &str) -> Result<Vec<Uuid>> {
        self.typed(column, "a set of uuids", Datum::as_uuids)
    }

    pub fn string_map(&self, column: &str) -> Result<BTreeMap<String, String>> {
        self.typed(column, "a string map", Datum::as_string_map)
    }
}

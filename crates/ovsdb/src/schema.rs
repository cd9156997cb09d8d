//! A minimal view of a database schema (RFC 7047 §3.2): enough to check versions, tables,
//! columns and indexes. The full JSON is kept for anything else.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub name: String,
    pub version: String,
    pub tables: BTreeMap<String, TableSchema>,
    /// The schema exactly as the server sent it.
    pub json: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// Column name to its `<column-schema>` JSON.
    pub columns: BTreeMap<String, Value>,
    pub is_root: bool,
    /// Each index is a set of columns whose values are unique together.
    pub indexes: Vec<Vec<String>>,
}

impl Schema {
    pub fn from_json(json: Value) -> Result<Schema> {
        let str_field = |key: &str| -> Result<String> {
            json.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::decode("schema", format!("missing string {key:?}")))
        };
        let name = str_field("name")?;
        let version = str_field("version")?;
        let Some(Value::Object(tables_json)) = json.get("tables") else {
            return Err(Error::decode("schema", "missing \"tables\" object"));
        };
        let mut tables = BTreeMap::new();
        for (tname, t) in tables_json {
            let what = || format!("schema of table {tname}");
            let Some(Value::Object(cols)) = t.get("columns") else {
                return Err(Error::decode(what(), "missing \"columns\" object"));
            };
            let indexes = match t.get("indexes") {
                None => Vec::new(),
                Some(Value::Array(ix)) => ix
                    .iter()
                    .map(|i| {
                        i.as_array()
                            .and_then(|cols| {
                                cols.iter()
                                    .map(|c| c.as_str().map(str::to_string))
                                    .collect()
                            })
                            .ok_or_else(|| Error::decode(what(), format!("bad index {i}")))
                    })
                    .collect::<Result<_>>()?,
                Some(other) => return Err(Error::decode(what(), format!("bad indexes {other}"))),
            };
            tables.insert(
                tname.clone(),
                TableSchema {
                    columns: cols.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    is_root: t.get("isRoot").and_then(Value::as_bool).unwrap_or(false),
                    indexes,
                },
            );
        }
        Ok(Schema {
            name,
            version,
            tables,
            json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_schema() {
        let s = Schema::from_json(json!({
            "name": "Open_vSwitch", "version": "8.3.1",
            "tables": {
                "Open_vSwitch": {"columns": {"cur_cfg": {"type": "integer"}}, "isRoot": true},
                "Bridge": {"columns": {"name": {"type": "string", "mutable": false}},
                           "indexes": [["name"]]}
            }
        }))
        .expect("schema");
        assert_eq!(s.version, "8.3.1");
        assert!(s.tables["Open_vSwitch"].is_root);
        assert!(!s.tables["Bridge"].is_root);
        assert_eq!(s.tables["Bridge"].indexes, vec![vec!["name".to_string()]]);
        assert!(s.tables["Open_vSwitch"].columns.contains_key("cur_cfg"));
    }

    #[test]
    fn rejects_malformed_schemas() {
        let cases = [
            json!({}),
            json!({"name": "x", "version": "1"}),
            json!({"name": "x", "version": "1", "tables": {"T": {}}}),
            json!({"name": "x", "version": "1", "tables": {"T": {"columns": {}, "indexes": [[1]]}}}),
        ];
        for c in cases {
            assert!(Schema::from_json(c.clone()).is_err(), "{c}");
        }
    }
}

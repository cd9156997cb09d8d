//! RFC 7047 §5.2 transaction operations, their conditions and mutations, and their results.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::datum::{Datum, Row};
use crate::error::{Error, Result};

/// A `where` clause element: `[column, function, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub function: Function,
    pub value: Datum,
}

/// The comparison of a [`Condition`] (RFC 7047 §5.1 `<function>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
    Includes,
    Excludes,
}

impl Function {
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Lt => "<",
            Function::Le => "<=",
            Function::Eq => "==",
            Function::Ne => "!=",
            Function::Ge => ">=",
            Function::Gt => ">",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

impl Condition {
    pub fn new(column: impl Into<String>, function: Function, value: impl Into<Datum>) -> Self {
        Condition {
            column: column.into(),
            function,
            value: value.into(),
        }
    }
    pub fn eq(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Eq, value)
    }
    pub fn ne(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Ne, value)
    }
    pub fn lt(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Lt, value)
    }
    pub fn le(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Le, value)
    }
    pub fn gt(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Gt, value)
    }
    pub fn ge(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Ge, value)
    }
    pub fn includes(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Includes, value)
    }
    pub fn excludes(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Excludes, value)
    }
    /// The row whose `_uuid` is `uuid`.
    pub fn uuid(uuid: Uuid) -> Self {
        Self::eq("_uuid", uuid)
    }

    pub fn to_json(&self) -> Value {
        json!([self.column, self.function.as_str(), self.value.to_json()])
    }
}

/// A `mutations` element: `[column, mutator, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub column: String,
    pub mutator: Mutator,
    pub value: Datum,
}

/// RFC 7047 §5.1 `<mutator>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Insert,
    Delete,
}

impl Mutator {
    pub fn as_str(self) -> &'static str {
        match self {
            Mutator::Add => "+=",
            Mutator::Sub => "-=",
            Mutator::Mul => "*=",
            Mutator::Div => "/=",
            Mutator::Rem => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        }
    }
}

impl Mutation {
    pub fn new(column: impl Into<String>, mutator: Mutator, value: impl Into<Datum>) -> Self {
        Mutation {
            column: column.into(),
            mutator,
            value: value.into(),
        }
    }
    pub fn add(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Mutator::Add, value)
    }
    pub fn sub(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Mutator::Sub, value)
    }
    pub fn mul(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Mutator::Mul, value)
    }
    pub fn div(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Mutator::Div, value)
    }
    pub fn rem(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Mutator::Rem, value)
    }
    /// Add elements to a set, or pairs to a map (existing keys keep their value).
    pub fn insert(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Mutator::Insert, value)
    }
    /// Remove elements from a set; from a map, remove pairs (a map) or keys (a set).
    pub fn delete(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Mutator::Delete, value)
    }

    pub fn to_json(&self) -> Value {
        json!([self.column, self.mutator.as_str(), self.value.to_json()])
    }
}

/// When a `wait` operation is satisfied: the selected rows equal (`==`) or differ from (`!=`)
/// the given rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    Equal,
    NotEqual,
}

/// One operation of a `transact` request (RFC 7047 §5.2).
///
/// Build with the constructors (`Operation::insert(..).uuid_name(..)`); the modifier methods
/// apply only to the variant named in their doc and leave any other operation unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Insert {
        table: String,
        row: Row,
        uuid_name: Option<String>,
    },
    Select {
        table: String,
        conditions: Vec<Condition>,
        columns: Option<Vec<String>>,
    },
    Update {
        table: String,
        conditions: Vec<Condition>,
        row: Row,
    },
    Mutate {
        table: String,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    },
    Delete {
        table: String,
        conditions: Vec<Condition>,
    },
    Wait {
        table: String,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: WaitUntil,
        rows: Vec<Row>,
        /// Milliseconds; `None` waits as long as the server allows, `Some(0)` checks once.
        timeout_ms: Option<u64>,
    },
    Commit {
        durable: bool,
    },
    Abort,
    Comment(String),
    /// Fails with "not owner" unless this session holds the lock (RFC 7047 §5.2.11).
    Assert {
        lock: String,
    },
}

impl Operation {
    pub fn insert(table: impl Into<String>, row: Row) -> Self {
        Operation::Insert {
            table: table.into(),
            row,
            uuid_name: None,
        }
    }
    pub fn select(table: impl Into<String>, conditions: Vec<Condition>) -> Self {
        Operation::Select {
            table: table.into(),
            conditions,
            columns: None,
        }
    }
    pub fn update(table: impl Into<String>, conditions: Vec<Condition>, row: Row) -> Self {
        Operation::Update {
            table: table.into(),
            conditions,
            row,
        }
    }
    pub fn mutate(
        table: impl Into<String>,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    ) -> Self {
        Operation::Mutate {
            table: table.into(),
            conditions,
            mutations,
        }
    }
    pub fn delete(table: impl Into<String>, conditions: Vec<Condition>) -> Self {
        Operation::Delete {
            table: table.into(),
            conditions,
        }
    }
    /// Wait until the `columns` of the rows matching `conditions` equal (or differ from) `rows`.
    pub fn wait(
        table: impl Into<String>,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: WaitUntil,
        rows: Vec<Row>,
    ) -> Self {
        Operation::Wait {
            table: table.into(),
            conditions,
            columns,
            until,
            rows,
            timeout_ms: None,
        }
    }
    pub fn comment(text: impl Into<String>) -> Self {
        Operation::Comment(text.into())
    }
    pub fn commit(durable: bool) -> Self {
        Operation::Commit { durable }
    }
    pub fn assert_lock(lock: impl Into<String>) -> Self {
        Operation::Assert { lock: lock.into() }
    }

    /// Insert: name the new row so later operations can refer to it as `["named-uuid", name]`.
    pub fn uuid_name(mut self, name: impl Into<String>) -> Self {
        if let Operation::Insert { uuid_name, .. } = &mut self {
            *uuid_name = Some(name.into());
        }
        self
    }

    /// Select: return only these columns. Wait: compare these columns.
    pub fn columns<S: AsRef<str>>(mut self, cols: impl IntoIterator<Item = S>) -> Self {
        let cols: Vec<String> = cols.into_iter().map(|c| c.as_ref().to_string()).collect();
        match &mut self {
            Operation::Select { columns, .. } => *columns = Some(cols),
            Operation::Wait { columns, .. } => *columns = cols,
            _ => {}
        }
        self
    }

    /// Wait: give up after `ms` milliseconds (0 = check once), failing with "timed out".
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        if let Operation::Wait { timeout_ms, .. } = &mut self {
            *timeout_ms = Some(ms);
        }
        self
    }

    /// The RFC 7047 name of the operation, e.g. "insert".
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Insert { .. } => "insert",
            Operation::Select { .. } => "select",
            Operation::Update { .. } => "update",
            Operation::Mutate { .. } => "mutate",
            Operation::Delete { .. } => "delete",
            Operation::Wait { .. } => "wait",
            Operation::Commit { .. } => "commit",
            Operation::Abort => "abort",
            Operation::Comment(_) => "comment",
            Operation::Assert { .. } => "assert",
        }
    }

    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("op".into(), json!(self.name()));
        let conds = |c: &[Condition]| Value::Array(c.iter().map(Condition::to_json).collect());
        match self {
            Operation::Insert {
                table,
                row,
                uuid_name,
            } => {
                o.insert("table".into(), json!(table));
                o.insert("row".into(), row.to_json());
                if let Some(n) = uuid_name {
                    o.insert("uuid-name".into(), json!(n));
                }
            }
            Operation::Select {
                table,
                conditions,
                columns,
            } => {
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conds(conditions));
                if let Some(c) = columns {
                    o.insert("columns".into(), json!(c));
                }
            }
            Operation::Update {
                table,
                conditions,
                row,
            } => {
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conds(conditions));
                o.insert("row".into(), row.to_json());
            }
            Operation::Mutate {
                table,
                conditions,
                mutations,
            } => {
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conds(conditions));
                o.insert(
                    "mutations".into(),
                    Value::Array(mutations.iter().map(Mutation::to_json).collect()),
                );
            }
            Operation::Delete { table, conditions } => {
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conds(conditions));
            }
            Operation::Wait {
                table,
                conditions,
                columns,
                until,
                rows,
                timeout_ms,
            } => {
                o.insert("table".into(), json!(table));
                o.insert("where".into(), conds(conditions));
                o.insert("columns".into(), json!(columns));
                let until = match until {
                    WaitUntil::Equal => "==",
                    WaitUntil::NotEqual => "!=",
                };
                o.insert("until".into(), json!(until));
                o.insert(
                    "rows".into(),
                    Value::Array(rows.iter().map(Row::to_json).collect()),
                );
                if let Some(t) = timeout_ms {
                    o.insert("timeout".into(), json!(t));
                }
            }
            Operation::Commit { durable } => {
                o.insert("durable".into(), json!(durable));
            }
            Operation::Abort => {}
            Operation::Comment(text) => {
                o.insert("comment".into(), json!(text));
            }
            Operation::Assert { lock } => {
                o.insert("lock".into(), json!(lock));
            }
        }
        Value::Object(o)
    }
}

/// The result of one successful operation: `insert` fills `uuid`, `select` fills `rows`,
/// `update`/`mutate`/`delete` fill `count`; the others leave all empty.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpResult {
    pub uuid: Option<Uuid>,
    pub rows: Option<Vec<Row>>,
    pub count: Option<u64>,
}

/// The error object of a failed operation (or of the commit).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpError {
    pub error: String,
    pub details: Option<String>,
}

impl OpResult {
    /// Decodes one element of a transact reply: `Ok(Err(..))` for an `{"error": ...}` element.
    pub(crate) fn from_json(value: &Value) -> Result<std::result::Result<OpResult, OpError>> {
        let Value::Object(o) = value else {
            return Err(Error::decode(
                "operation result",
                format!("expected an object, got {value}"),
            ));
        };
        if let Some(err) = o.get("error").filter(|e| !e.is_null()) {
            return Ok(Err(OpError {
                error: err
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| err.to_string()),
                details: o.get("details").and_then(Value::as_str).map(str::to_string),
            }));
        }
        let uuid = match o.get("uuid") {
            None => None,
            Some(v) => Some(
                crate::datum::Atom::from_json(v)?
                    .as_uuid()
                    .ok_or_else(|| Error::decode("insert result", format!("bad uuid {v}")))?,
            ),
        };
        let rows = match o.get("rows") {
            None => None,
            Some(Value::Array(rows)) => {
                Some(rows.iter().map(Row::from_json).collect::<Result<_>>()?)
            }
            Some(v) => return Err(Error::decode("select result", format!("bad rows {v}"))),
        };
        let count = match o.get("count") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| Error::decode("operation result", format!("bad count {v}")))?,
            ),
        };
        Ok(Ok(OpResult { uuid, rows, count }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "73c1bee0-d025-4cd6-9d5b-56c4f60bb1fe";

    #[test]
    fn operations_encode() {
        let u1 = Uuid::parse_str(U1).expect("uuid");
        let cases: Vec<(Operation, Value)> = vec![
            (
                Operation::insert("Bridge", Row::new().with("name", "br0")).uuid_name("newbr"),
                json!({"op":"insert","table":"Bridge","row":{"name":"br0"},"uuid-name":"newbr"}),
            ),
            (
                Operation::insert("Bridge", Row::new()),
                json!({"op":"insert","table":"Bridge","row":{}}),
            ),
            (
                Operation::select("Bridge", vec![Condition::eq("name", "br0")]).columns(["name"]),
                json!({"op":"select","table":"Bridge","where":[["name","==","br0"]],"columns":["name"]}),
            ),
            (
                Operation::update(
                    "Port",
                    vec![Condition::uuid(u1)],
                    Row::new().with("tag", Datum::optional(Some(5))),
                ),
                json!({"op":"update","table":"Port","where":[["_uuid","==",["uuid",U1]]],"row":{"tag":5}}),
            ),
            (
                Operation::mutate(
                    "Open_vSwitch",
                    vec![],
                    vec![
                        Mutation::add("next_cfg", 1),
                        Mutation::insert("bridges", Datum::named_uuid("newbr")),
                        Mutation::delete("external_ids", Datum::set(["k"])),
                    ],
                ),
                json!({"op":"mutate","table":"Open_vSwitch","where":[],"mutations":[
                    ["next_cfg","+=",1],["bridges","insert",["named-uuid","newbr"]],
                    ["external_ids","delete","k"]]}),
            ),
            (
                Operation::delete(
                    "Bridge",
                    vec![Condition::ne("name", "x"), Condition::includes("ports", u1)],
                ),
                json!({"op":"delete","table":"Bridge","where":[["name","!=","x"],["ports","includes",["uuid",U1]]]}),
            ),
            (
                Operation::wait(
                    "Bridge",
                    vec![Condition::eq("name", "br0")],
                    vec![],
                    WaitUntil::Equal,
                    vec![],
                )
                .columns(["name"])
                .timeout_ms(0),
                json!({"op":"wait","table":"Bridge","where":[["name","==","br0"]],"columns":["name"],
                       "until":"==","rows":[],"timeout":0}),
            ),
            (
                Operation::comment("hi"),
                json!({"op":"comment","comment":"hi"}),
            ),
            (
                Operation::commit(true),
                json!({"op":"commit","durable":true}),
            ),
            (Operation::Abort, json!({"op":"abort"})),
            (
                Operation::assert_lock("l"),
                json!({"op":"assert","lock":"l"}),
            ),
        ];
        for (op, wire) in cases {
            assert_eq!(op.to_json(), wire, "{}", op.name());
        }
    }

    #[test]
    fn modifiers_leave_other_operations_alone() {
        let op = Operation::delete("Bridge", vec![]);
        assert_eq!(op.clone().uuid_name("x").columns(["a"]).timeout_ms(1), op);
    }

    #[test]
    fn conditions_and_mutations_encode() {
        let cases = [
            (Condition::lt("a", 1).to_json(), json!(["a", "<", 1])),
            (Condition::le("a", 1).to_json(), json!(["a", "<=", 1])),
            (Condition::gt("a", 1).to_json(), json!(["a", ">", 1])),
            (Condition::ge("a", 1).to_json(), json!(["a", ">=", 1])),
            (
                Condition::excludes("a", 1).to_json(),
                json!(["a", "excludes", 1]),
            ),
            (Mutation::sub("a", 1).to_json(), json!(["a", "-=", 1])),
            (Mutation::mul("a", 2).to_json(), json!(["a", "*=", 2])),
            (Mutation::div("a", 2).to_json(), json!(["a", "/=", 2])),
            (Mutation::rem("a", 2).to_json(), json!(["a", "%=", 2])),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn results_decode() {
        let u1 = Uuid::parse_str(U1).expect("uuid");
        let ok = |v: Value| {
            OpResult::from_json(&v)
                .expect("decodes")
                .expect("not an error")
        };
        assert_eq!(ok(json!({"uuid": ["uuid", U1]})).uuid, Some(u1));
        assert_eq!(ok(json!({"count": 3})).count, Some(3));
        assert_eq!(ok(json!({})), OpResult::default());
        let rows = ok(json!({"rows": [{"name": "br0"}]})).rows.expect("rows");
        assert_eq!(rows, vec![Row::new().with("name", "br0")]);

        let err = OpResult::from_json(
            &json!({"error": "timed out", "details": "\"where\" clause test failed"}),
        )
        .expect("decodes")
        .expect_err("is an error");
        assert_eq!(err.error, "timed out");
        assert_eq!(err.details.as_deref(), Some("\"where\" clause test failed"));

        for bad in [
            json!(null),
            json!(1),
            json!({"uuid": "x"}),
            json!({"rows": 1}),
            json!({"count": -1}),
        ] {
            assert!(OpResult::from_json(&bad).is_err(), "{bad}");
        }
    }
}

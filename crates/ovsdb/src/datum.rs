//! RFC 7047 §5.1 values: atoms, sets, maps, and rows.
//!
//! A scalar column is a set of exactly one atom, an optional column a set of zero or one, so
//! [`Datum`] has just two shapes, `Set` and `Map`. On the wire a one-element set is written as the
//! bare atom (always valid, whatever the column's type); both spellings decode.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{Error, Result};

/// One OVSDB atom.
#[derive(Debug, Clone, PartialEq)]
pub enum Atom {
    Integer(i64),
    Real(f64),
    Boolean(bool),
    String(String),
    Uuid(Uuid),
    /// A reference, inside one transaction, to a row inserted with that `uuid-name`.
    NamedUuid(String),
}

impl Atom {
    /// A reference to the row that an `insert` of this transaction names `name`.
    pub fn named_uuid(name: impl Into<String>) -> Atom {
        Atom::NamedUuid(name.into())
    }

    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => json!(i),
            // Non-finite reals cannot be written as JSON; OVSDB rejects them too.
            Atom::Real(r) => serde_json::Number::from_f64(*r)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u.to_string()]),
            Atom::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }

    pub fn from_json(value: &Value) -> Result<Atom> {
        match value {
            Value::Bool(b) => Ok(Atom::Boolean(*b)),
            Value::String(s) => Ok(Atom::String(s.clone())),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Atom::Integer(i))
                } else if n.is_u64() {
                    Err(Error::decode("atom", format!("integer {n} out of range")))
                } else {
                    n.as_f64()
                        .map(Atom::Real)
                        .ok_or_else(|| Error::decode("atom", format!("bad number {n}")))
                }
            }
            Value::Array(a) => match a.as_slice() {
                [Value::String(tag), Value::String(s)] if tag == "uuid" => Uuid::parse_str(s)
                    .map(Atom::Uuid)
                    .map_err(|e| Error::decode("uuid atom", format!("{s:?}: {e}"))),
                [Value::String(tag), Value::String(s)] if tag == "named-uuid" => {
                    Ok(Atom::NamedUuid(s.clone()))
                }
                _ => Err(Error::decode("atom", format!("unexpected array {value}"))),
            },
            Value::Null | Value::Object(_) => {
                Err(Error::decode("atom", format!("unexpected {value}")))
            }
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// A real; integers convert, because the server writes `1.0` as `1`.
    pub fn as_real(&self) -> Option<f64> {
        match self {
            Atom::Real(r) => Some(*r),
            Atom::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Atom::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Atom::Uuid(u) => Some(*u),
            _ => None,
        }
    }
}

macro_rules! atom_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Atom {
            fn from(v: $t) -> Atom { Atom::Integer(i64::from(v)) }
        }
        impl From<$t> for Datum {
            fn from(v: $t) -> Datum { Datum::Set(vec![Atom::from(v)]) }
        }
    )*};
}
atom_from_int!(i64, i32, u32, u16, u8);

impl From<f64> for Atom {
    fn from(v: f64) -> Atom {
        Atom::Real(v)
    }
}
impl From<bool> for Atom {
    fn from(v: bool) -> Atom {
        Atom::Boolean(v)
    }
}
impl From<&str> for Atom {
    fn from(v: &str) -> Atom {
        Atom::String(v.to_string())
    }
}
impl From<String> for Atom {
    fn from(v: String) -> Atom {
        Atom::String(v)
    }
}
impl From<&String> for Atom {
    fn from(v: &String) -> Atom {
        Atom::String(v.clone())
    }
}
impl From<Uuid> for Atom {
    fn from(v: Uuid) -> Atom {
        Atom::Uuid(v)
    }
}

/// An OVSDB value: a set of atoms (scalars are one-element sets) or a map of atom pairs.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Set(Vec<Atom>),
    Map(Vec<(Atom, Atom)>),
}

impl Datum {
    pub fn empty_set() -> Datum {
        Datum::Set(Vec::new())
    }

    /// An empty map. Map columns need this spelling: the server rejects `["set",[]]` there.
    pub fn empty_map() -> Datum {
        Datum::Map(Vec::new())
    }

    pub fn set<A: Into<Atom>>(atoms: impl IntoIterator<Item = A>) -> Datum {
        Datum::Set(atoms.into_iter().map(Into::into).collect())
    }

    pub fn map<K: Into<Atom>, V: Into<Atom>>(pairs: impl IntoIterator<Item = (K, V)>) -> Datum {
        Datum::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn uuid(uuid: Uuid) -> Datum {
        Datum::Set(vec![Atom::Uuid(uuid)])
    }

    pub fn named_uuid(name: impl Into<String>) -> Datum {
        Datum::Set(vec![Atom::named_uuid(name)])
    }

    /// A 0-or-1 set, the value of an optional column.
    pub fn optional<A: Into<Atom>>(value: Option<A>) -> Datum {
        Datum::Set(value.map(Into::into).into_iter().collect())
    }

    pub fn to_json(&self) -> Value {
        match self {
            Datum::Set(atoms) if atoms.len() == 1 => atoms[0].to_json(),
            Datum::Set(atoms) => {
                json!(["set", atoms.iter().map(Atom::to_json).collect::<Vec<_>>()])
            }
            Datum::Map(pairs) => json!([
                "map",
                pairs
                    .iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    pub fn from_json(value: &Value) -> Result<Datum> {
        if let Value::Array(a) = value
            && let [Value::String(tag), Value::Array(items)] = a.as_slice()
        {
            match tag.as_str() {
                "set" => {
                    return items
                        .iter()
                        .map(Atom::from_json)
                        .collect::<Result<Vec<_>>>()
                        .map(Datum::Set);
                }
                "map" => {
                    let pairs = items
                        .iter()
                        .map(|pair| match pair {
                            Value::Array(kv) if kv.len() == 2 => {
                                Ok((Atom::from_json(&kv[0])?, Atom::from_json(&kv[1])?))
                            }
                            _ => Err(Error::decode("map", format!("bad pair {pair}"))),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    return Ok(Datum::Map(pairs));
                }
                _ => {}
            }
        }
        Atom::from_json(value).map(|a| Datum::Set(vec![a]))
    }

    /// The single atom of a one-element set.
    pub fn as_atom(&self) -> Option<&Atom> {
        match self {
            Datum::Set(atoms) if atoms.len() == 1 => atoms.first(),
            _ => None,
        }
    }

    pub fn as_set(&self) -> Option<&[Atom]> {
        match self {
            Datum::Set(atoms) => Some(atoms),
            Datum::Map(_) => None,
        }
    }

    /// The pairs of a map; an empty set counts as an empty map.
    pub fn as_map(&self) -> Option<&[(Atom, Atom)]> {
        match self {
            Datum::Map(pairs) => Some(pairs),
            Datum::Set(atoms) if atoms.is_empty() => Some(&[]),
            Datum::Set(_) => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Datum::Set(a) => a.is_empty(),
            Datum::Map(p) => p.is_empty(),
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        self.as_atom()?.as_integer()
    }

    pub fn as_real(&self) -> Option<f64> {
        self.as_atom()?.as_real()
    }

    pub fn as_bool(&self) -> Option<bool> {
        self.as_atom()?.as_bool()
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_atom()?.as_str()
    }

    pub fn as_uuid(&self) -> Option<Uuid> {
        self.as_atom()?.as_uuid()
    }

    /// Every atom of the set as a uuid, or `None` if any is not one.
    pub fn as_uuids(&self) -> Option<Vec<Uuid>> {
        self.as_set()?.iter().map(Atom::as_uuid).collect()
    }

    /// A string-to-string map (`external_ids`, `options`, ...), or `None` if it is not one.
    pub fn as_string_map(&self) -> Option<BTreeMap<String, String>> {
        self.as_map()?
            .iter()
            .map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
            .collect()
    }

    /// The value under `key` in a map.
    pub fn map_get(&self, key: &Atom) -> Option<&Atom> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

impl From<Atom> for Datum {
    fn from(a: Atom) -> Datum {
        Datum::Set(vec![a])
    }
}
impl From<f64> for Datum {
    fn from(v: f64) -> Datum {
        Datum::from(Atom::from(v))
    }
}
impl From<bool> for Datum {
    fn from(v: bool) -> Datum {
        Datum::from(Atom::from(v))
    }
}
impl From<&str> for Datum {
    fn from(v: &str) -> Datum {
        Datum::from(Atom::from(v))
    }
}
impl From<String> for Datum {
    fn from(v: String) -> Datum {
        Datum::from(Atom::from(v))
    }
}
impl From<&String> for Datum {
    fn from(v: &String) -> Datum {
        Datum::from(Atom::from(v))
    }
}
impl From<Uuid> for Datum {
    fn from(v: Uuid) -> Datum {
        Datum::uuid(v)
    }
}
impl From<&[Uuid]> for Datum {
    fn from(v: &[Uuid]) -> Datum {
        Datum::set(v.iter().copied())
    }
}
impl From<&BTreeMap<String, String>> for Datum {
    fn from(m: &BTreeMap<String, String>) -> Datum {
        Datum::map(m.iter())
    }
}

/// A row: column name to value. Rows read with `select` also carry `_uuid` and `_version`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(BTreeMap<String, Datum>);

impl Row {
    pub fn new() -> Row {
        Row::default()
    }

    /// Builder form of [`Row::insert`].
    pub fn with(mut self, column: impl Into<String>, value: impl Into<Datum>) -> Row {
        self.insert(column, value);
        self
    }

    pub fn insert(&mut self, column: impl Into<String>, value: impl Into<Datum>) -> Option<Datum> {
        self.0.insert(column.into(), value.into())
    }

    pub fn get(&self, column: &str) -> Option<&Datum> {
        self.0.get(column)
    }

    pub fn remove(&mut self, column: &str) -> Option<Datum> {
        self.0.remove(column)
    }

    /// The `_uuid` column, present in rows returned by `select`.
    pub fn uuid(&self) -> Option<Uuid> {
        self.get("_uuid")?.as_uuid()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Datum)> {
        self.0.iter()
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    }

    pub fn from_json(value: &Value) -> Result<Row> {
        let Value::Object(obj) = value else {
            return Err(Error::decode(
                "row",
                format!("expected an object, got {value}"),
            ));
        };
        obj.iter()
            .map(|(k, v)| {
                Datum::from_json(v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| Error::decode(format!("column {k:?}"), e.to_string()))
            })
            .collect::<Result<BTreeMap<_, _>>>()
            .map(Row)
    }
}

impl FromIterator<(String, Datum)> for Row {
    fn from_iter<I: IntoIterator<Item = (String, Datum)>>(iter: I) -> Row {
        Row(iter.into_iter().collect())
    }
}

impl IntoIterator for Row {
    type Item = (String, Datum);
    type IntoIter = std::collections::btree_map::IntoIter<String, Datum>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl From<BTreeMap<String, Datum>> for Row {
    fn from(m: BTreeMap<String, Datum>) -> Row {
        Row(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "73c1bee0-d025-4cd6-9d5b-56c4f60bb1fe";
    const U2: &str = "8517b7aa-66c7-49b3-af7b-8655c36458dc";

    fn u(s: &str) -> Uuid {
        Uuid::parse_str(s).expect("test uuid")
    }

    #[test]
    fn datum_round_trips() {
        let cases: Vec<(&str, Datum, Value)> = vec![
            ("integer", Datum::from(42), json!(42)),
            ("negative", Datum::from(-1i64), json!(-1)),
            ("real", Datum::from(1.5), json!(1.5)),
            ("boolean", Datum::from(true), json!(true)),
            ("string", Datum::from("br0"), json!("br0")),
            ("uuid", Datum::uuid(u(U1)), json!(["uuid", U1])),
            (
                "named-uuid",
                Datum::named_uuid("newbr"),
                json!(["named-uuid", "newbr"]),
            ),
            ("empty set", Datum::empty_set(), json!(["set", []])),
            (
                "two-element set",
                Datum::set([u(U1), u(U2)]),
                json!(["set", [["uuid", U1], ["uuid", U2]]]),
            ),
            ("empty map", Datum::empty_map(), json!(["map", []])),
            (
                "map",
                Datum::map([("a", "b"), ("c", "d")]),
                json!(["map", [["a", "b"], ["c", "d"]]]),
            ),
            (
                "integer map",
                Datum::map([(1, u(U1))]),
                json!(["map", [[1, ["uuid", U1]]]]),
            ),
        ];
        for (name, datum, wire) in cases {
            assert_eq!(datum.to_json(), wire, "{name}: encode");
            assert_eq!(
                Datum::from_json(&wire).expect(name),
                datum,
                "{name}: decode"
            );
        }
    }

    #[test]
    fn one_element_set_decodes_both_ways() {
        let cases = [
            (json!(["set", [5]]), json!(5)),
            (json!(["set", ["x"]]), json!("x")),
            (json!(["set", [["uuid", U1]]]), json!(["uuid", U1])),
        ];
        for (long, short) in cases {
            let a = Datum::from_json(&long).expect("long form");
            let b = Datum::from_json(&short).expect("short form");
            assert_eq!(a, b, "{long} vs {short}");
            assert_eq!(a.to_json(), short, "encodes as bare atom");
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        let cases = [
            json!(null),
            json!({"a": 1}),
            json!(["uuid", "not-a-uuid"]),
            json!(["uuid"]),
            json!(["set", [null]]),
            json!(["map", [[1]]]),
            json!(["map", [1, 2]]),
            json!(["bogus", []]),
            json!(["set", [["set", []]]]),
            json!(18446744073709551615u64),
        ];
        for wire in cases {
            assert!(Datum::from_json(&wire).is_err(), "{wire} should not decode");
        }
    }

    #[test]
    fn accessors() {
        assert_eq!(Datum::from(7).as_integer(), Some(7));
        assert_eq!(Datum::empty_set().as_integer(), None);
        assert_eq!(Datum::from(3).as_real(), Some(3.0));
        assert_eq!(Datum::from("s").as_str(), Some("s"));
        assert_eq!(Datum::from(false).as_bool(), Some(false));
        assert_eq!(Datum::uuid(u(U1)).as_uuids(), Some(vec![u(U1)]));
        assert_eq!(Datum::set([1, 2]).as_uuids(), None);
        let m = Datum::map([("k", "v")]);
        assert_eq!(m.map_get(&Atom::from("k")), Some(&Atom::from("v")));
        assert_eq!(
            m.as_string_map(),
            Some(BTreeMap::from([("k".to_string(), "v".to_string())]))
        );
        assert_eq!(Datum::empty_set().as_string_map(), Some(BTreeMap::new()));
        assert_eq!(Datum::map([(1, 2)]).as_string_map(), None);
        assert_eq!(Datum::optional(None::<i64>), Datum::empty_set());
        assert_eq!(Datum::optional(Some(3)), Datum::from(3));
    }

    #[test]
    fn decodes_a_row_as_a_real_server_returns_it() {
        // Captured from ovsdb-server 3.1.0 (select on Bridge), trimmed.
        let wire = json!({
            "name": "br0", "stp_enable": false, "ports": ["set", []],
            "fail_mode": ["set", []], "_uuid": ["uuid", U1],
            "rstp_status": ["map", []], "datapath_type": "netdev",
            "external_ids": ["map", [["a", "b"]]], "controller": ["uuid", U2]
        });
        let row = Row::from_json(&wire).expect("row");
        assert_eq!(row.uuid(), Some(u(U1)));
        assert_eq!(row.get("name").and_then(Datum::as_str), Some("br0"));
        assert_eq!(row.get("ports"), Some(&Datum::empty_set()));
        assert_eq!(
            row.get("controller").and_then(Datum::as_uuids),
            Some(vec![u(U2)])
        );
        assert_eq!(row.to_json(), wire);
        assert!(Row::from_json(&json!([1])).is_err());
        assert!(Row::from_json(&json!({"x": null})).is_err());
    }
}

/// Property tests (issue 9's fuzzing): any JSON decodes to a datum or is refused, never a
/// panic; what decodes encodes back to itself.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use testkit::props;

    #[test]
    fn any_json_decodes_or_is_refused_and_round_trips() {
        let tagged = prop_oneof![Just("set"), Just("map"), Just("uuid"), Just("named-uuid")];
        props::check(
            "ovsdb datum decode",
            20_000,
            prop_oneof![
                props::json(),
                (tagged, props::json()).prop_map(|(t, v)| serde_json::json!([t, v])),
            ],
            |value| {
                if let Ok(d) = Datum::from_json(&value) {
                    let again = Datum::from_json(&d.to_json()).ok();
                    prop_assert_eq!(again, Some(d));
                }
                // A row decodes or is refused; a panic fails the property.
                let _ = Row::from_json(&value);
                Ok(())
            },
        );
    }
}

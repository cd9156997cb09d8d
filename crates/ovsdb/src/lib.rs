//! An OVSDB (RFC 7047) JSON-RPC client on tokio.
//!
//! - [`Client`]: connect over `unix:` or `tcp:`, [`transact`](Client::transact) with checked
//!   results, [`monitor`](Client::monitor), `echo`, `list_dbs`, `get_schema`.
//! - [`Datum`], [`Atom`], [`Row`]: RFC 7047 §5.1 values. [`Operation`], [`Condition`],
//!   [`Mutation`]: §5.2 operations.
//! - [`vswitch`]: typed rows for the `Open_vSwitch` database and helpers that wait for
//!   ovs-vswitchd (`wait_cur_cfg`, `wait_interface_ofport`) without sleeping.
//!
//! ```no_run
//! # async fn demo() -> ovsdb::Result<()> {
//! use ovsdb::{Client, Condition, Datum, Mutation, Operation, Row};
//! let client = Client::connect("unix:/run/openvswitch/db.sock").await?;
//! let results = client
//!     .transact("Open_vSwitch", vec![
//!         Operation::insert("Bridge", Row::new().with("name", "br0")).uuid_name("br"),
//!         Operation::mutate("Open_vSwitch", vec![],
//!             vec![Mutation::insert("bridges", Datum::named_uuid("br"))]),
//!     ])
//!     .await?;
//! let bridge_uuid = results[0].uuid;
//! # let _ = (bridge_uuid, Condition::eq("name", "br0"));
//! # Ok(()) }
//! ```

mod address;
mod client;
mod datum;
mod error;
mod framing;
mod monitor;
mod ops;
mod rpc;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vswitch;

pub use address::Address;
pub use client::Client;
pub use datum::{Atom, Datum, Row};
pub use error::{Error, Result};
pub use monitor::{
    Monitor, MonitorRequest, MonitorSelect, RowUpdate, TableUpdate, TableUpdates,
    table_updates_from_json,
};
pub use ops::{Condition, Function, Mutation, Mutator, OpResult, Operation, WaitUntil};
pub use schema::{Schema, TableSchema};
/// Re-exported because it appears in the API.
pub use uuid::Uuid;

//! [`Client`]: connect, call, transact, monitor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, trace};

use crate::address::Address;
use crate::error::{Error, Result};
use crate::monitor::{Monitor, MonitorRequest, table_updates_from_json};
use crate::ops::{OpResult, Operation};
use crate::rpc::{Pending, Shared, read_loop, write_loop};
use crate::schema::Schema;

struct Inner {
    addr: String,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can be waiting, so just hang up.
        self.reader.abort();
        self.writer.abort();
    }
}

/// A connection to one OVSDB server. Cheap to clone; the connection closes when the last clone
/// (including those held by [`Monitor`]s) is dropped. Must be used inside a tokio runtime.
///
/// Calls have no deadline of their own (a `wait` operation may legitimately block); bound them
/// with the `*_timeout` variants or `tokio::time::timeout`. Connecting has none either: wrap
/// `connect` in `tokio::time::timeout` for a TCP peer that may not answer.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

/// Removes a pending entry if its call is abandoned (timeout, dropped future).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl Client {
    /// Connects to `unix:PATH`, `tcp:IP:PORT` or `tcp:[IPv6]:PORT`.
    pub async fn connect(addr: &str) -> Result<Client> {
        let parsed = Address::parse(addr)?;
        let connect_err = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let (r, w): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match &parsed {
            Address::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Address::Tcp(sa) => {
                let s = tokio::net::TcpStream::connect(sa)
                    .await
                    .map_err(connect_err)?;
                s.set_nodelay(true).map_err(connect_err)?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        debug!(addr, "connected to OVSDB");
        let shared = Arc::new(Shared::default());
        let (out, out_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(w, out_rx, shared.clone(), addr.to_string()));
        let reader = tokio::spawn(read_loop(r, shared.clone(), out.clone(), addr.to_string()));
        Ok(Client {
            inner: Arc::new(Inner {
                addr: addr.to_string(),
                shared,
                out,
                next_id: AtomicU64::new(1),
                reader,
                writer,
            }),
        })
    }

    /// The address this client was connected with.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed
    }

    /// Sends any JSON-RPC request and returns its `result`; an `error` reply becomes
    /// [`Error::Rpc`]. The escape hatch for methods this crate does not wrap.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.call_inner(method, params, None).await
    }

    /// [`Client::call`] with a deadline; on expiry the request is cancelled on the server
    /// (RFC 7047 `cancel`) and [`Error::Timeout`] returned.
    pub async fn call_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        self.call_inner(method, params, Some(timeout)).await
    }

    async fn call_inner(
        &self,
        method: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.shared.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            st.pending.insert(
                id,
                Pending {
                    method: method.to_string(),
                    tx,
                },
            );
        }
        let _guard = PendingGuard {
            shared: &self.inner.shared,
            id,
        };
        trace!(id, method, "sending request");
        self.send(&json!({"method": method, "params": params, "id": id}))?;
        let reply = match timeout {
            None => rx.await,
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r,
                Err(_) => {
                    // Best effort: the server answers the cancelled request, nobody listens.
                    let _ = self.send(&json!({"method": "cancel", "params": [id], "id": null}));
                    return Err(Error::Timeout {
                        what: format!("OVSDB {method} request"),
                        after: t,
                    });
                }
            },
        };
        reply.map_err(|_| Error::Closed)?
    }

    fn send(&self, msg: &Value) -> Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(|e| Error::decode("request", e.to_string()))?;
        self.inner.out.send(bytes).map_err(|_| Error::Closed)
    }

    /// Runs `ops` as one transaction on `db` and checks every result: the first failed operation,
    /// or a failed commit (reported at `index == ops.len()`, op "commit"), is an
    /// [`Error::Transaction`]. On success there is exactly one result per operation.
    pub async fn transact(&self, db: &str, ops: Vec<Operation>) -> Result<Vec<OpResult>> {
        self.transact_inner(db, ops, None).await
    }

    /// [`Client::transact`] with a client-side deadline (the request is cancelled on expiry;
    /// whether it committed is then unknown, as with any lost reply).
    pub async fn transact_timeout(
        &self,
        db: &str,
        ops: Vec<Operation>,
        timeout: Duration,
    ) -> Result<Vec<OpResult>> {
        self.transact_inner(db, ops, Some(timeout)).await
    }

    async fn transact_inner(
        &self,
        db: &str,
        ops: Vec<Operation>,
        timeout: Option<Duration>,
    ) -> Result<Vec<OpResult>> {
        let mut params = Vec::with_capacity(ops.len() + 1);
        params.push(json!(db));
        params.extend(ops.iter().map(Operation::to_json));
        let reply = self
            .call_inner("transact", Value::Array(params), timeout)
            .await?;
        check_transact_reply(db, &ops, &reply)
    }

    /// Starts a monitor on `db`: one [`MonitorRequest`] per table. The reply's initial contents
    /// are in [`Monitor::initial`], later changes arrive through [`Monitor::recv`].
    pub async fn monitor<S: Into<String>>(
        &self,
        db: &str,
        requests: impl IntoIterator<Item = (S, MonitorRequest)>,
    ) -> Result<Monitor> {
        let id = format!("m{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let reqs: serde_json::Map<String, Value> = requests
            .into_iter()
            .map(|(t, r)| (t.into(), r.to_json()))
            .collect();
        // Register the route first: updates may follow the reply before we see it.
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut st = self.inner.shared.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            st.monitors.insert(id.clone(), tx);
        }
        let reply = self
            .call("monitor", json!([db, id, Value::Object(reqs)]))
            .await
            .and_then(|v| table_updates_from_json(&v));
        match reply {
            Ok(initial) => Ok(Monitor {
                id,
                initial,
                rx,
                client: self.clone(),
                done: false,
            }),
            Err(e) => {
                self.inner.shared.lock().monitors.remove(&id);
                Err(e)
            }
        }
    }

    /// Cancels monitor `id` on the server and stops routing its updates.
    pub async fn monitor_cancel(&self, id: &str) -> Result<()> {
        self.inner.shared.lock().monitors.remove(id);
        self.call("monitor_cancel", json!([id])).await.map(|_| ())
    }

    /// Used by `Monitor::drop`: cannot await, so fire and forget.
    pub(crate) fn drop_monitor(&self, id: &str) {
        let was_routed = self.inner.shared.lock().monitors.remove(id).is_some();
        if was_routed {
            let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            // The reply has no pending entry and is dropped by the reader.
            let _ = self.send(&json!({"method": "monitor_cancel", "params": [id], "id": n}));
        }
    }

    /// Round-trips an `echo` request; a liveness check.
    pub async fn echo(&self) -> Result<()> {
        let params = json!(["ovsdb-rs echo"]);
        let reply = self.call("echo", params.clone()).await?;
        if reply != params {
            return Err(Error::protocol(
                "echo reply",
                format!("{reply} differs from {params}"),
            ));
        }
        Ok(())
    }

    /// The names of the databases the server holds.
    pub async fn list_dbs(&self) -> Result<Vec<String>> {
        let reply = self.call("list_dbs", json!([])).await?;
        reply
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect())
            .ok_or_else(|| {
                Error::protocol("list_dbs reply", format!("expected strings, got {reply}"))
            })
    }

    /// The schema of `db`.
    pub async fn get_schema(&self, db: &str) -> Result<Schema> {
        let reply = self.call("get_schema", json!([db])).await?;
        Schema::from_json(reply)
    }
}

fn check_transact_reply(db: &str, ops: &[Operation], reply: &Value) -> Result<Vec<OpResult>> {
    let Some(items) = reply.as_array() else {
        return Err(Error::protocol(
            "transact reply",
            format!("expected an array, got {reply}"),
        ));
    };
    let mut results = Vec::with_capacity(ops.len());
    let mut missing = None;
    for (index, item) in items.iter().enumerate() {
        if item.is_null() {
            // Operations after a failed one are not run and have null results.
            missing.get_or_insert(index);
            continue;
        }
        match OpResult::from_json(item)? {
            Err(e) => {
                return Err(Error::Transaction {
                    db: db.to_string(),
                    index,
                    op: ops.get(index).map_or("commit", Operation::name).to_string(),
                    error: e.error,
                    details: e.details,
                });
            }
            Ok(r) if index < ops.len() => results.push(r),
            Ok(_) => {}
        }
    }
    if missing.is_some() || results.len() != ops.len() {
        return Err(Error::protocol(
            "transact reply",
            format!(
                "{} operations, {} results and no error",
                ops.len(),
                results.len()
            ),
        ));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::Row;

    #[test]
    fn checks_transact_replies() {
        let ops = vec![
            Operation::insert("Bridge", Row::new()),
            Operation::select("Bridge", vec![]),
        ];
        let ok = check_transact_reply(
            "db",
            &ops,
            &json!([{"uuid": ["uuid", "73c1bee0-d025-4cd6-9d5b-56c4f60bb1fe"]}, {"rows": []}]),
        )
        .expect("ok");
        assert_eq!(ok.len(), 2);

        let cases = [
            (
                json!([{}, {}, {"error": "constraint violation", "details": "d"}]),
                2,
                "commit",
                "constraint violation",
            ),
            (
                json!([{"error": "timed out"}, null]),
                0,
                "insert",
                "timed out",
            ),
            (
                json!([{}, {"error": "syntax error"}]),
                1,
                "select",
                "syntax error",
            ),
        ];
        for (reply, want_index, want_op, want_error) in cases {
            match check_transact_reply("db", &ops, &reply) {
                Err(Error::Transaction {
                    index, op, error, ..
                }) => {
                    assert_eq!(
                        (index, op.as_str(), error.as_str()),
                        (want_index, want_op, want_error)
                    );
                }
                other => panic!("{reply}: {other:?}"),
            }
        }
        for bad in [json!({}), json!([{}]), json!([{}, null]), json!([1, {}])] {
            assert!(check_transact_reply("db", &ops, &bad).is_err(), "{bad}");
        }
    }
}

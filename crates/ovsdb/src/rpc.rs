//! The JSON-RPC plumbing under [`crate::Client`]: one background reader that matches replies
//! to requests by id, answers the server's `echo`, and routes monitor notifications; one writer
//! fed by a channel. When the connection ends, every pending call and monitor gets `Closed`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

use crate::error::{Error, Result};
use crate::framing::Framer;
use crate::monitor::{TableUpdates, table_updates_from_json};

type Reply = std::result::Result<Value, Error>;

pub(crate) struct Pending {
    pub(crate) method: String,
    pub(crate) tx: oneshot::Sender<Reply>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) closed: bool,
    pub(crate) pending: HashMap<u64, Pending>,
    pub(crate) monitors: HashMap<String, mpsc::UnboundedSender<Result<TableUpdates>>>,
}

/// State shared by the client handles and the background tasks.
#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain maps behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every pending call and monitor with `Error::Closed`; later calls fail at once.
    fn close(&self) {
        let (pending, monitors) = {
            let mut st = self.lock();
            st.closed = true;
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.monitors),
            )
        };
        for (_, p) in pending {
            let _ = p.tx.send(Err(Error::Closed));
        }
        for (_, m) in monitors {
            let _ = m.send(Err(Error::Closed));
        }
    }
}

pub(crate) async fn write_loop(
    mut w: Box<dyn AsyncWrite + Send + Unpin>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
    addr: String,
) {
    while let Some(bytes) = rx.recv().await {
        if let Err(e) = w.write_all(&bytes).await {
            warn!(addr, error = %e, "writing to OVSDB failed; closing");
            shared.close();
            return;
        }
    }
}

pub(crate) async fn read_loop(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    addr: String,
) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                debug!(addr, "OVSDB server closed the connection");
                break;
            }
            Ok(n) => n,
            Err(e) => {
                warn!(addr, error = %e, "reading from OVSDB failed; closing");
                break;
            }
        };
        framer.push(&buf[..n]);
        let mut broken = false;
        loop {
            match framer.next_message() {
                Ok(Some(msg)) => dispatch(&msg, &shared, &out, &addr),
                Ok(None) => break,
                Err(e) => {
                    warn!(addr, error = %e, "OVSDB stream is corrupt; closing");
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            break;
        }
    }
    shared.close();
}

fn dispatch(msg: &[u8], shared: &Shared, out: &mpsc::UnboundedSender<Vec<u8>>, addr: &str) {
    let msg: Value = match serde_json::from_slice(msg) {
        Ok(v) => v,
        Err(e) => {
            warn!(addr, error = %e, "ignoring a message that is not JSON");
            return;
        }
    };
    let id = msg.get("id").filter(|v| !v.is_null());
    if let Some(method) = msg.get("method").and_then(Value::as_str) {
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        match (method, id) {
            ("echo", Some(id)) => {
                trace!(addr, "answering echo");
                let reply = json!({"id": id, "result": params, "error": null});
                let _ = out.send(reply.to_string().into_bytes());
            }
            ("update", None) => route_update(&params, shared, addr),
            (_, Some(id)) => {
                debug!(addr, method, "refusing unknown request from server");
                let reply = json!({"id": id, "result": null, "error": "unknown method"});
                let _ = out.send(reply.to_string().into_bytes());
            }
            (_, None) => debug!(addr, method, "ignoring notification"),
        }
        return;
    }
    let Some(id) = id.and_then(Value::as_u64) else {
        debug!(addr, %msg, "ignoring a reply with an id we never sent");
        return;
    };
    let Some(pending) = shared.lock().pending.remove(&id) else {
        trace!(addr, id, "reply to an abandoned request");
        return;
    };
    let reply = match msg.get("error").filter(|e| !e.is_null()) {
        Some(err) => Err(rpc_error(&pending.method, err)),
        None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
    };
    let _ = pending.tx.send(reply);
}

fn rpc_error(method: &str, err: &Value) -> Error {
    let (error, details) = match err {
        Value::String(s) => (s.clone(), None),
        Value::Object(o) => (
            o.get("error")
                .and_then(Value::as_str)
                .map_or_else(|| err.to_string(), str::to_string),
            o.get("details").and_then(Value::as_str).map(str::to_string),
        ),
        other => (other.to_string(), None),
    };
    Error::Rpc {
        method: method.to_string(),
        error,
        details,
    }
}

fn route_update(params: &Value, shared: &Shared, addr: &str) {
    let (Some(id), Some(updates)) = (params.get(0), params.get(1)) else {
        warn!(addr, %params, "ignoring malformed update notification");
        return;
    };
    let key = match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let st = shared.lock();
    let Some(tx) = st.monitors.get(&key) else {
        trace!(addr, monitor = key, "update for a monitor nobody holds");
        return;
    };
    let _ = tx.send(table_updates_from_json(updates));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_answers_echo_routes_updates_and_replies() {
        let shared = Shared::default();
        let (out, mut out_rx) = mpsc::unbounded_channel();
        let (mon_tx, mut mon_rx) = mpsc::unbounded_channel();
        let (call_tx, mut call_rx) = oneshot::channel();
        {
            let mut st = shared.lock();
            st.monitors.insert("m1".into(), mon_tx);
            st.pending.insert(
                7,
                Pending {
                    method: "echo".into(),
                    tx: call_tx,
                },
            );
        }
        let feed = |v: Value| dispatch(v.to_string().as_bytes(), &shared, &out, "test");

        feed(json!({"method": "echo", "params": ["x"], "id": "echo"}));
        let reply: Value =
            serde_json::from_slice(&out_rx.try_recv().expect("echo reply")).expect("json");
        assert_eq!(reply, json!({"id": "echo", "result": ["x"], "error": null}));

        feed(json!({"method": "steal", "params": [], "id": 3}));
        let reply: Value =
            serde_json::from_slice(&out_rx.try_recv().expect("refusal")).expect("json");
        assert_eq!(reply["error"], json!("unknown method"));

        feed(json!({"method": "update", "params": ["m1", {"Bridge": {}}], "id": null}));
        let u = mon_rx.try_recv().expect("routed").expect("decoded");
        assert!(u["Bridge"].is_empty());
        feed(json!({"method": "update", "params": ["m1", []], "id": null}));
        assert!(
            mon_rx.try_recv().expect("routed").is_err(),
            "bad updates reach the monitor as errors"
        );
        // Unknown monitors, junk, and replies nobody waits for are dropped without harm.
        feed(json!({"method": "update", "params": ["m9", {}], "id": null}));
        feed(json!({"method": "update", "params": "junk", "id": null}));
        feed(json!({"id": 99, "result": [], "error": null}));
        feed(json!({"id": "x", "result": []}));
        dispatch(b"{not json", &shared, &out, "test");
        assert!(out_rx.try_recv().is_err());

        feed(json!({"id": 7, "result": ["ok"], "error": null}));
        assert_eq!(
            call_rx.try_recv().expect("reply").expect("ok"),
            json!(["ok"])
        );
        assert!(shared.lock().pending.is_empty());
    }

    #[test]
    fn close_ends_pending_calls_and_monitors() {
        let shared = Shared::default();
        let (mon_tx, mut mon_rx) = mpsc::unbounded_channel();
        let (call_tx, mut call_rx) = oneshot::channel();
        {
            let mut st = shared.lock();
            st.monitors.insert("m1".into(), mon_tx);
            st.pending.insert(
                1,
                Pending {
                    method: "transact".into(),
                    tx: call_tx,
                },
            );
        }
        shared.close();
        assert!(matches!(call_rx.try_recv(), Ok(Err(Error::Closed))));
        assert!(matches!(mon_rx.try_recv(), Ok(Err(Error::Closed))));
        assert!(shared.lock().closed);
    }

    #[test]
    fn rpc_errors_decode() {
        let e = rpc_error(
            "transact",
            &json!({"error": "unknown database", "details": "no Nope"}),
        );
        assert_eq!(e.ovsdb_error(), Some("unknown database"));
        assert!(e.to_string().contains("no Nope"));
        let e = rpc_error("foo", &json!("unknown method"));
        assert_eq!(e.ovsdb_error(), Some("unknown method"));
    }
}

//! The Kubernetes source against a **protocol-level test double of the API server**, not a
//! real one (none can run here): a small HTTP/1.1 server on 127.0.0.1 that answers the two
//! requests kube's watcher makes for Nodes, exactly as an API server would on the wire —
//! `GET /api/v1/nodes` (a `NodeList` with a `resourceVersion`) and
//! `GET /api/v1/nodes?watch=true&resourceVersion=N` (a chunked stream of JSON watch events
//! after revision N). The real `kube::Client` and `kube::runtime::watcher` talk to it over
//! TCP; only the server side is a double.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use common::{LONG, eventually, init_logs};
use flaxd::k8s::{KubeSource, kube};
use flaxd::membership::{Membership, Publisher};
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct State {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    /// Every watch event so far, with its resourceVersion, so a watch from any revision
    /// gets what it missed.
    history: Vec<(u64, String)>,
}

/// The API server double.
#[derive(Clone)]
struct ApiDouble {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(u64, String)>,
}

impl ApiDouble {
    fn new() -> Self {
        ApiDouble {
            state: Arc::default(),
            events: broadcast::channel(1024).0,
        }
    }

    fn record(&self, st: &mut State, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        st.history.push((st.rv, line.clone()));
        let _ = self.events.send((st.rv, line));
    }

    /// Creates or updates a Node (as kubelet / the node controller would).
    fn apply(&self, name: &str, address: &str, pod_cidr: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "resourceVersion": st.rv.to_string()},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": name},
            ]},
        });
        let kind = if st.nodes.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.nodes.insert(name.to_owned(), node.clone());
        self.record(&mut st, kind, node);
    }

    fn delete(&self, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        if let Some(mut node) = st.nodes.remove(name) {
            node["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            self.record(&mut st, "DELETED", node);
        }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let json_response = |status: u16, body: Value| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())).boxed())
                .unwrap()
        };
        if req.uri().path() != "/api/v1/nodes" {
            return json_response(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
            );
        }
        if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // Subscribe and copy the history under one lock: nothing falls in between.
            let (missed, live) = {
                let st = self.state.lock().unwrap();
                let missed: Vec<String> = st
                    .history
                    .iter()
                    .filter(|(rv, _)| *rv > from)
                    .map(|(_, l)| l.clone())
                    .collect();
                (missed, self.events.subscribe())
            };
            let live = futures::stream::unfold(live, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok((_, line)) => return Some((line, rx)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            let frames = futures::stream::iter(missed)
                .chain(live)
                .map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(line))));
            return Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap();
        }
        let st = self.state.lock().unwrap();
        json_response(
            200,
            json!({
                "apiVersion": "v1", "kind": "NodeList",
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": st.nodes.values().cloned().collect::<Vec<_>>(),
            }),
        )
    }

    /// Serves on an ephemeral loopback port until `stop`; returns the base URL.
    async fn serve(&self, stop: CancellationToken) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let me = me.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let resp = me.respond(&req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        url
    }
}

fn vteps(m: &Membership) -> Vec<(String, String, Option<String>)> {
    m.iter()
        .map(|(n, m)| {
            (
                n.clone(),
                m.vtep.to_string(),
                m.pod_cidrs.first().map(|c| c.to_string()),
            )
        })
        .collect()
}

fn want(list: &[(&str, &str, &str)]) -> Vec<(String, String, Option<String>)> {
    list.iter()
        .map(|(n, ip, c)| (n.to_string(), ip.to_string(), Some(c.to_string())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_snapshots_follow_the_api_server() {
    init_logs();
    let api = ApiDouble::new();
    api.apply("a", "192.0.2.1", "10.244.1.0/24");
    let stop = CancellationToken::new();
    let url = api.serve(stop.clone()).await;
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).expect("a client");
    let (publisher, rx) = Publisher::new();
    let source = tokio::spawn(KubeSource::new(client, "InternalIP").run(publisher, stop.clone()));
    let snapshot = |list: Vec<(String, String, Option<String>)>| {
        let rx = rx.clone();
        async move {
            eventually(&format!("membership {list:?}"), LONG, || async {
                let s = rx.borrow().clone();
                (s.synced && vteps(&s.members) == list).then_some(())
            })
            .await
        }
    };
    // The initial list.
    snapshot(want(&[("a", "192.0.2.1", "10.244.1.0/24")])).await;
    // A node is added.
    api.apply("b", "192.0.2.2", "10.244.2.0/24");
    snapshot(want(&[
        ("a", "192.0.2.1", "10.244.1.0/24"),
        ("b", "192.0.2.2", "10.244.2.0/24"),
    ]))
    .await;
    // Its address changes.
    api.apply("b", "192.0.2.22", "10.244.2.0/24");
    snapshot(want(&[
        ("a", "192.0.2.1", "10.244.1.0/24"),
        ("b", "192.0.2.22", "10.244.2.0/24"),
    ]))
    .await;
    // It is deleted.
    api.delete("b");
    snapshot(want(&[("a", "192.0.2.1", "10.244.1.0/24")])).await;
    assert!(rx.borrow().connected);
    stop.cancel();
    source.await.unwrap();
}

//! Integration tests against a real ovsdb-server, one private server per test.

use std::time::Duration;

use ovsdb::testing::{OvsdbServer, random_suffix};
use ovsdb::vswitch::{self, Bridge, Interface, OpenVSwitch, Port, Table};
use ovsdb::{
    Client, Condition, Datum, Error, Monitor, MonitorRequest, Mutation, Operation, Row, Uuid,
    WaitUntil,
};

const DB: &str = vswitch::DB;
const LONG: Duration = Duration::from_secs(10);

async fn setup() -> (OvsdbServer, Client) {
    let server = OvsdbServer::start().expect("start ovsdb-server");
    let client = Client::connect(&server.unix_addr()).await.expect("connect");
    client
        .transact(DB, vec![Operation::insert("Open_vSwitch", Row::new())])
        .await
        .expect("insert root row");
    (server, client)
}

/// Inserts bridge `name` with one internal port and interface of the same name, in one
/// transaction, linking it from the root row. Returns (bridge, port, interface) uuids.
async fn add_bridge(client: &Client, name: &str) -> ovsdb::Result<(Uuid, Uuid, Uuid)> {
    let iface = Interface {
        name: name.into(),
        kind: "internal".into(),
        ..Default::default()
    };
    let port = Port {
        name: name.into(),
        ..Default::default()
    }
    .to_row()
    .with("interfaces", Datum::named_uuid("iface"));
    let bridge = Bridge {
        name: name.into(),
        datapath_type: "netdev".into(),
        ..Default::default()
    }
    .to_row()
    .with("ports", Datum::named_uuid("port"));
    let r = client
        .transact(
            DB,
            vec![
                Operation::insert("Interface", iface.to_row()).uuid_name("iface"),
                Operation::insert("Port", port).uuid_name("port"),
                Operation::insert("Bridge", bridge).uuid_name("br"),
                Operation::mutate(
                    "Open_vSwitch",
                    vec![],
                    vec![Mutation::insert("bridges", Datum::named_uuid("br"))],
                ),
            ],
        )
        .await?;
    assert_eq!(r[3].count, Some(1), "one root row mutated");
    let uuid = |i: usize| r[i].uuid.expect("insert returns a uuid");
    Ok((uuid(2), uuid(1), uuid(0)))
}

async fn select_bridge(client: &Client, name: &str) -> Vec<Bridge> {
    let r = client
        .transact(
            DB,
            vec![Operation::select(
                "Bridge",
                vec![Condition::eq("name", name)],
            )],
        )
        .await
        .expect("select");
    Bridge::from_select(r[0].rows.as_deref().expect("rows")).expect("typed bridges")
}

#[tokio::test]
async fn insert_select_update_delete() {
    let (_server, client) = setup().await;
    let name = format!("b{}", random_suffix());
    let (br, port, iface) = add_bridge(&client, &name).await.expect("add bridge");

    let bridges = select_bridge(&client, &name).await;
    assert_eq!(bridges.len(), 1);
    assert_eq!((bridges[0].uuid, &bridges[0].ports), (br, &vec![port]));
    assert_eq!(bridges[0].datapath_type, "netdev");

    let r = client
        .transact(
            DB,
            vec![
                Operation::select("Port", vec![Condition::uuid(port)]).columns(Port::COLUMNS),
                Operation::select("Interface", vec![Condition::uuid(iface)]),
                Operation::select("Open_vSwitch", vec![]),
            ],
        )
        .await
        .expect("select port, interface, root");
    let rows = |i: usize| r[i].rows.clone().expect("rows");
    // The port select asked for typed columns only, so it has no _uuid: decode with the known one.
    let p = Port::from_row(port, &rows(0)[0]).expect("port");
    assert_eq!(p.interfaces, vec![iface]);
    let i = Interface::from_select(&rows(1)).expect("interface");
    assert_eq!(
        (i[0].name.as_str(), i[0].kind.as_str()),
        (name.as_str(), "internal")
    );
    let root = OpenVSwitch::from_select(&rows(2)).expect("root");
    assert_eq!(root[0].bridges, vec![br]);

    let r = client
        .transact(
            DB,
            vec![Operation::update(
                "Bridge",
                vec![Condition::eq("name", name.as_str())],
                Row::new()
                    .with("fail_mode", "secure")
                    .with("external_ids", Datum::map([("owner", "test")])),
            )],
        )
        .await
        .expect("update");
    assert_eq!(r[0].count, Some(1));
    let b = &select_bridge(&client, &name).await[0];
    assert_eq!(b.fail_mode.as_deref(), Some("secure"));
    assert_eq!(
        b.external_ids.get("owner").map(String::as_str),
        Some("test")
    );

    // Deleting a referenced row fails the commit; unlink it in the same transaction.
    let err = client
        .transact(
            DB,
            vec![Operation::delete("Bridge", vec![Condition::uuid(br)])],
        )
        .await
        .expect_err("delete of a referenced bridge");
    assert!(err.is_referential_integrity_violation(), "{err}");
    let r = client
        .transact(
            DB,
            vec![
                Operation::delete("Bridge", vec![Condition::uuid(br)]),
                Operation::mutate(
                    "Open_vSwitch",
                    vec![],
                    vec![Mutation::delete("bridges", br)],
                ),
                Operation::select("Port", vec![Condition::uuid(port)]),
            ],
        )
        .await
        .expect("delete");
    assert_eq!(r[0].count, Some(1));
    assert!(select_bridge(&client, &name).await.is_empty());
    // Port and Interface were garbage-collected at commit.
    let r = client
        .transact(
            DB,
            vec![Operation::select("Port", vec![Condition::uuid(port)])],
        )
        .await
        .expect("select");
    assert_eq!(r[0].rows.as_deref().map(<[Row]>::len), Some(0));
}

#[tokio::test]
async fn duplicate_bridge_name_is_a_typed_constraint_violation() {
    let (_server, client) = setup().await;
    let name = format!("b{}", random_suffix());
    add_bridge(&client, &name).await.expect("first insert");
    let err = add_bridge(&client, &name).await.expect_err("second insert");
    assert!(err.is_constraint_violation(), "{err}");
    match err {
        Error::Transaction {
            index, op, details, ..
        } => {
            assert_eq!((index, op.as_str()), (4, "commit"));
            assert!(details.unwrap_or_default().contains("identical values"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wait_operation_timing_out_is_typed() {
    let (_server, client) = setup().await;
    let name = format!("b{}", random_suffix());
    add_bridge(&client, &name).await.expect("add bridge");
    // "Wait until no bridge has this name", checked once: it has one, so it times out.
    let err = client
        .transact(
            DB,
            vec![
                Operation::comment("expect timeout"),
                Operation::wait(
                    "Bridge",
                    vec![Condition::eq("name", name.as_str())],
                    vec!["name".into()],
                    WaitUntil::Equal,
                    vec![],
                )
                .timeout_ms(0),
            ],
        )
        .await
        .expect_err("wait must time out");
    assert!(err.is_timed_out(), "{err}");
    assert!(
        matches!(err, Error::Transaction { index: 1, .. }),
        "{err:?}"
    );

    // The opposite condition holds at once.
    client
        .transact(
            DB,
            vec![
                Operation::wait(
                    "Bridge",
                    vec![Condition::eq("name", name.as_str())],
                    vec!["name".into()],
                    WaitUntil::NotEqual,
                    vec![],
                )
                .timeout_ms(0),
            ],
        )
        .await
        .expect("wait succeeds");
}

#[tokio::test]
async fn transact_timeout_cancels_and_the_client_still_works() {
    let (_server, client) = setup().await;
    // A wait with no timeout blocks until a bridge named so exists: never.
    let blocking = Operation::wait(
        "Bridge",
        vec![Condition::eq("name", "never")],
        vec!["name".into()],
        WaitUntil::NotEqual,
        vec![],
    );
    let err = client
        .transact_timeout(DB, vec![blocking], Duration::from_millis(200))
        .await
        .expect_err("must time out");
    assert!(err.is_timeout(), "{err}");
    client.echo().await.expect("echo after a cancelled request");
}

async fn next_update(mon: &mut Monitor) -> ovsdb::TableUpdates {
    tokio::time::timeout(LONG, mon.recv())
        .await
        .expect("an update within 10s")
        .expect("update")
}

#[tokio::test]
async fn monitor_sees_initial_insert_modify_delete() {
    let (_server, client) = setup().await;
    let first = format!("a{}", random_suffix());
    let (br1, _, _) = add_bridge(&client, &first).await.expect("add bridge");

    let mut mon = client
        .monitor(DB, [("Bridge", MonitorRequest::columns(Bridge::COLUMNS))])
        .await
        .expect("monitor");
    let initial = &mon.initial()["Bridge"];
    assert_eq!(initial.len(), 1);
    let b = Bridge::from_row(br1, initial[&br1].new.as_ref().expect("new")).expect("typed");
    assert_eq!(b.name, first);

    let second = format!("b{}", random_suffix());
    let (br2, _, _) = add_bridge(&client, &second).await.expect("add second");
    let u = next_update(&mut mon).await;
    let ru = &u["Bridge"][&br2];
    assert!(ru.old.is_none());
    let b2 = Bridge::from_row(br2, ru.new.as_ref().expect("new")).expect("typed");
    assert_eq!(b2.name, second);

    client
        .transact(
            DB,
            vec![Operation::update(
                "Bridge",
                vec![Condition::uuid(br2)],
                Row::new().with("fail_mode", "standalone"),
            )],
        )
        .await
        .expect("update");
    let u = next_update(&mut mon).await;
    let ru = &u["Bridge"][&br2];
    assert_eq!(
        ru.old.as_ref().and_then(|r| r.get("fail_mode")),
        Some(&Datum::empty_set())
    );
    let b2 = Bridge::from_row(br2, ru.new.as_ref().expect("new")).expect("typed");
    assert_eq!(b2.fail_mode.as_deref(), Some("standalone"));

    client
        .transact(
            DB,
            vec![Operation::mutate(
                "Open_vSwitch",
                vec![],
                vec![Mutation::delete("bridges", br2)],
            )],
        )
        .await
        .expect("unlink bridge");
    let u = next_update(&mut mon).await;
    let ru = &u["Bridge"][&br2];
    assert!(ru.new.is_none() && ru.old.is_some(), "{ru:?}");

    mon.cancel().await.expect("monitor_cancel");
    client.echo().await.expect("echo after cancel");
}

#[tokio::test]
async fn dropped_monitor_is_cancelled_and_others_keep_working() {
    let (_server, client) = setup().await;
    let dropped = client
        .monitor(DB, [("Bridge", MonitorRequest::all())])
        .await
        .expect("monitor");
    let mut kept = client
        .monitor(DB, [("Bridge", MonitorRequest::columns(["name"]))])
        .await
        .expect("monitor");
    drop(dropped);
    add_bridge(&client, &format!("b{}", random_suffix()))
        .await
        .expect("add");
    let u = next_update(&mut kept).await;
    assert_eq!(u["Bridge"].len(), 1);
}

#[tokio::test]
async fn echo_list_dbs_get_schema_and_rpc_errors() {
    let (_server, client) = setup().await;
    client.echo().await.expect("echo");
    let dbs = client.list_dbs().await.expect("list_dbs");
    assert!(dbs.iter().any(|d| d == DB), "{dbs:?}");
    let schema = client.get_schema(DB).await.expect("get_schema");
    assert_eq!(schema.name, DB);
    assert!(schema.tables["Open_vSwitch"].is_root);
    assert_eq!(
        schema.tables["Bridge"].indexes,
        vec![vec!["name".to_string()]]
    );
    assert!(schema.tables["Port"].columns.contains_key("protected"));

    let err = client
        .transact("Nope", vec![Operation::select("Bridge", vec![])])
        .await
        .expect_err("unknown database");
    assert_eq!(err.ovsdb_error(), Some("unknown database"), "{err}");
    let err = client
        .get_schema("Nope")
        .await
        .expect_err("unknown database");
    assert!(matches!(err, Error::Rpc { .. }), "{err:?}");
    let err = client
        .transact(DB, vec![Operation::select("NoSuchTable", vec![])])
        .await
        .expect_err("unknown table");
    assert_eq!(err.ovsdb_error(), Some("syntax error"), "{err}");
}

#[tokio::test]
async fn concurrent_calls_on_clones_get_their_own_replies() {
    let (_server, client) = setup().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("c{i}{}", random_suffix());
            let (br, _, _) = add_bridge(&c, &name).await.expect("add");
            let got = select_bridge(&c, &name).await;
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].uuid, br);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let r = client
        .transact(DB, vec![Operation::select("Bridge", vec![])])
        .await
        .expect("select all");
    assert_eq!(r[0].rows.as_ref().map(Vec::len), Some(20));
}

#[tokio::test]
async fn server_killed_ends_pending_calls_and_monitors_with_closed() {
    let (mut server, client) = setup().await;
    let mut mon = client
        .monitor(DB, [("Bridge", MonitorRequest::all())])
        .await
        .expect("monitor");
    let blocking = Operation::wait(
        "Bridge",
        vec![Condition::eq("name", "never")],
        vec!["name".into()],
        WaitUntil::NotEqual,
        vec![],
    );
    let mut pending = Box::pin(client.transact(DB, vec![blocking]));
    // Polling `pending` first sends its request; the server answers in order, so the echo's
    // reply proves the transaction is blocked on the server.
    tokio::select! {
        biased;
        r = &mut pending => panic!("the wait cannot finish: {r:?}"),
        r = client.echo() => r.expect("echo"),
    }
    server.kill();

    let err = tokio::time::timeout(LONG, pending)
        .await
        .expect("pending call ends");
    assert!(matches!(err, Err(Error::Closed)), "{err:?}");
    let err = tokio::time::timeout(LONG, mon.recv())
        .await
        .expect("monitor ends");
    assert!(matches!(err, Err(Error::Closed)), "{err:?}");
    assert!(
        matches!(mon.recv().await, Err(Error::Closed)),
        "stays closed"
    );
    assert!(client.is_closed());
    assert!(matches!(client.echo().await, Err(Error::Closed)));
    assert!(matches!(
        client
            .monitor(DB, [("Bridge", MonitorRequest::all())])
            .await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn connect_to_a_missing_socket_names_the_address() {
    let dir = testkit::tempdir().expect("tempdir");
    let addr = format!("unix:{}/nope.sock", dir.path().display());
    let err = Client::connect(&addr).await.expect_err("no socket");
    match &err {
        Error::Connect { addr: a, source } => {
            assert_eq!(a, &addr);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(&addr), "{err}");
    let err = Client::connect("bogus:x").await.expect_err("bad address");
    assert!(matches!(err, Error::Address { .. }), "{err:?}");
}

#[tokio::test]
async fn tcp_remote_works() {
    let server = OvsdbServer::start_with_tcp().expect("start");
    let addr = server.tcp_addr().expect("tcp port");
    let client = Client::connect(&addr).await.expect("connect over tcp");
    client.echo().await.expect("echo");
    assert!(
        client
            .list_dbs()
            .await
            .expect("list")
            .iter()
            .any(|d| d == DB)
    );
    client
        .transact(DB, vec![Operation::insert("Open_vSwitch", Row::new())])
        .await
        .expect("insert root");
    add_bridge(&client, "tcpbr")
        .await
        .expect("add bridge over tcp");
    assert_eq!(select_bridge(&client, "tcpbr").await.len(), 1);
}

#[tokio::test]
async fn wait_cur_cfg_without_vswitchd_times_out() {
    let (_server, client) = setup().await;
    let mut ops = Vec::new();
    let next = vswitch::wait::bump_next_cfg(&mut ops);
    let r = client.transact(DB, ops).await.expect("bump");
    let target = next.target(&r).expect("target");
    assert_eq!(target, 1);
    let err = client
        .wait_cur_cfg(target, Duration::from_millis(300))
        .await
        .expect_err("nobody applies it");
    assert!(err.is_timeout(), "{err}");
    // cur_cfg 0 already satisfies target 0.
    assert_eq!(client.wait_cur_cfg(0, LONG).await.expect("reached"), 0);
}

#[tokio::test]
async fn answers_the_servers_inactivity_probes() {
    // A Manager remote with a 1 s probe: the server sends `echo` after 1 s idle and hangs up
    // 1 s later if it gets no answer.
    let server =
        OvsdbServer::start_with_args(&["--remote=db:Open_vSwitch,Open_vSwitch,manager_options"])
            .expect("start");
    let admin = Client::connect(&server.unix_addr()).await.expect("connect");
    let manager = Row::new()
        .with("target", "ptcp:0:127.0.0.1")
        .with("inactivity_probe", 1000);
    admin
        .transact(
            DB,
            vec![
                Operation::insert("Manager", manager).uuid_name("m"),
                Operation::insert(
                    "Open_vSwitch",
                    Row::new().with("manager_options", Datum::named_uuid("m")),
                ),
            ],
        )
        .await
        .expect("add manager");
    let port = server.wait_tcp_port().expect("manager port");
    let client = Client::connect(&format!("tcp:127.0.0.1:{port}"))
        .await
        .expect("connect over tcp");
    client.echo().await.expect("echo");
    // Idle time is the point of this test: long enough for two unanswered probes to kill it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!client.is_closed(), "probes were answered");
    client.echo().await.expect("still connected");
}

#[tokio::test]
async fn tcp_remote_over_ipv6_loopback_works() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        panic!("missing prerequisite: an IPv6 loopback address ([::1] cannot be bound: {e})");
    }
    let server = OvsdbServer::start_with_args(&["--remote=ptcp:0:[::1]"]).expect("start");
    let port = server.wait_tcp_port().expect("port");
    let client = Client::connect(&format!("tcp:[::1]:{port}"))
        .await
        .expect("connect over IPv6");
    client.echo().await.expect("echo");
    assert!(
        client
            .list_dbs()
            .await
            .expect("list")
            .iter()
            .any(|d| d == DB)
    );
}

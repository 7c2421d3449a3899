//! The relay tier against a real etcd: relays as processes of the binary, sidecars
//! following them over the gRPC Watch and over HTTP long-poll, relays killed and
//! restarted, TLS and bearer tokens.

use std::time::Duration;

use serde_json::{Value, json};
use veltrix_sidecar::{api::proto, config::RawSettings};

use crate::{admin::http, services::*, support::*};

const PREFIX: &str = "/veltrix/relayed/";

fn etcd_source(etcd: &Etcd) -> String {
    format!("etcd://{}{}", etcd.endpoint(), PREFIX.trim_end_matches('/'))
}

/// A relay process on a fixed loopback port (so that it can come back on it), with its
/// admin server on another.
struct Relay {
    process: Serve,
    port: u16,
    admin: String,
}

impl Relay {
    fn start(source: &str, extra: &[&str]) -> Relay {
        Relay::start_on(free_port(), source, extra)
    }

    fn start_on(port: u16, source: &str, extra: &[&str]) -> Relay {
        let admin = format!("127.0.0.1:{}", free_port());
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--role", "relay", "--source", source, "--listen", &listen, "--admin-listen", &admin];
        args.extend(extra);
        let process = Serve::start(args);
        process.log_line(&["\"ready\""]);
        Relay { process, port, admin }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn metric(&self, name: &str) -> f64 {
        let (status, body) = http(&self.admin, "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("parse");
        crate::admin::metric(&scrape, name, &[])
    }
}

fn relayed(source: String, labels: &[(&str, &str)]) -> RawSettings {
    RawSettings {
        source: Some(source),
        labels: Some(labels.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()),
        backoff_min: Some("50ms".into()),
        backoff_max: Some("300ms".into()),
        connect_timeout: Some("500ms".into()),
        ..Default::default()
    }
}

async fn wait_for_value(client: &mut Client, key: &str, expected: Value) {
    let mut last = None;
    let arrived = tokio::time::timeout(DEADLINE, async {
        loop {
            last = Some(get_json(client, key).await.map(|(value, _)| value));
            if matches!(&last, Some(Ok(value)) if *value == expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(arrived.is_ok(), "{key} never became {expected}; last: {last:?}");
}

async fn status(client: &mut Client) -> proto::StatusResponse {
    client.status(proto::StatusRequest {}).await.expect("status").into_inner()
}

#[tokio::test]
async fn a_put_in_etcd_reaches_sidecars_over_grpc_and_long_poll_each_with_its_own_overlays() {
    let Some(etcd) = Etcd::start().await else { return };
    let mut writer = EtcdWriter::connect(etcd.client_port, PREFIX).await;
    writer.put("match.json", r#"{"queue": 8, "map": "dust"}"#).await;
    writer.put("match@region=eu.json", r#"{"map": "alps"}"#).await;
    let relay = Relay::start(&etcd_source(&etcd), &[]);

    let over_grpc = Sidecar::start_with(&[], relayed(format!("grpc://{}", relay.addr()), &[("region", "eu")])).await;
    let over_http = Sidecar::start_with(&[], relayed(format!("http://{}", relay.addr()), &[("region", "us")])).await;
    let (mut eu, mut us) = (over_grpc.client().await, over_http.client().await);
    assert_eq!(get_json(&mut eu, "match").await.expect("served").0, json!({"queue": 8, "map": "alps"}));
    assert_eq!(get_json(&mut us, "match").await.expect("served").0, json!({"queue": 8, "map": "dust"}));

    let revision = writer.put("match.json", r#"{"queue": 16, "map": "dust"}"#).await;
    wait_for_value(&mut eu, "match", json!({"queue": 16, "map": "alps"})).await;
    wait_for_value(&mut us, "match", json!({"queue": 16, "map": "dust"})).await;
    // Both report the relay's revision, which is etcd's.
    assert_eq!(status(&mut eu).await.upstream_revision, revision);
    assert_eq!(status(&mut us).await.upstream_revision, revision);

    writer.delete("match@region=eu.json").await;
    wait_for_value(&mut eu, "match", json!({"queue": 16, "map": "dust"})).await;

    // The relay passes a broken document on; each sidecar rejects it and keeps serving.
    writer.put("match.json", r#"{"queue": "#).await;
    within("the rejection on both sidecars", async {
        while status(&mut eu).await.rejections.is_empty() || status(&mut us).await.rejections.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(get_json(&mut us, "match").await.expect("still served").0, json!({"queue": 16, "map": "dust"}));
    assert_eq!(relay.metric("veltrix_relay_clients").await, 2.0);
}

#[tokio::test]
async fn sidecars_fail_over_between_relays_miss_nothing_and_serve_last_known_good_while_none_is_up() {
    let Some(etcd) = Etcd::start().await else { return };
    let mut writer = EtcdWriter::connect(etcd.client_port, PREFIX).await;
    writer.put("tick.json", r#"{"hz": 30}"#).await;
    writer.put("gone.json", r#"{"soon": true}"#).await;
    let source = etcd_source(&etcd);
    let mut first = Relay::start(&source, &[]);
    let mut second = Relay::start(&source, &[]);
    let relays = format!("{},{}", first.addr(), second.addr());

    let over_grpc = Sidecar::start_with(&[], relayed(format!("grpc://{relays}"), &[])).await;
    let mut grpc_client = over_grpc.client().await;
    let dirs = ServeDirs::new();
    let http_source = format!("http://{relays}");
    let http_args = dirs.args_from(&http_source, &["--backoff-min", "50ms", "--backoff-max", "300ms"]);
    let http_sidecar = Serve::start(&http_args);
    let mut http_client = connect_when_up(&dirs.addr()).await;
    for client in [&mut grpc_client, &mut http_client] {
        wait_for_value(client, "tick", json!({"hz": 30})).await;
    }

    // Both follow the first relay listed; it dies, and changes made meanwhile arrive
    // through the second as changes after the revision each sidecar had: no RESYNC.
    first.process.kill();
    writer.put("tick.json", r#"{"hz": 60}"#).await;
    writer.delete("gone.json").await;
    for client in [&mut grpc_client, &mut http_client] {
        wait_for_value(client, "tick", json!({"hz": 60})).await;
        within("the delete", async {
            while get_json(client, "gone").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    assert_eq!(second.metric("veltrix_relay_resyncs_total").await, 0.0, "resumed, not reloaded");
    assert_eq!(second.metric("veltrix_relay_clients").await, 2.0);

    // No relay left: both keep serving, and a sidecar restarted now serves its
    // last-known-good state.
    second.process.kill();
    writer.put("tick.json", r#"{"hz": 120}"#).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_json(&mut grpc_client, "tick").await.expect("still served").0, json!({"hz": 60}));
    assert!(!status(&mut grpc_client).await.upstream_healthy);
    drop(http_sidecar);
    let _http_sidecar = Serve::start(&http_args);
    let mut http_client = connect_when_up(&dirs.addr()).await;
    assert_eq!(get_json(&mut http_client, "tick").await.expect("last known good").0, json!({"hz": 60}));
    assert!(status(&mut http_client).await.serving_from_last_known_good);

    // A relay comes back where the first one was: both catch up with what they missed.
    let _back = Relay::start_on(first.port, &source, &[]);
    wait_for_value(&mut grpc_client, "tick", json!({"hz": 120})).await;
    wait_for_value(&mut http_client, "tick", json!({"hz": 120})).await;
    assert!(status(&mut http_client).await.upstream_healthy);
}

#[tokio::test]
async fn a_relay_needs_tls_and_a_token_off_loopback_and_refuses_a_wrong_token() {
    let config = tempfile::tempdir().expect("temp dir");
    write(config.path(), "tick.json", r#"{"hz": 30}"#);
    let source = config.path().display().to_string();
    let certificates = Certificates::generate();
    let token_file = config.path().join("..token");
    std::fs::write(&token_file, "s3cret\n").expect("write token");
    let token_path = token_file.display().to_string();

    // Off loopback: refused before anything is bound, saying what is missing.
    for (extra, missing) in [
        (vec![], "missing: TLS and the token"),
        (vec!["--token-file", &token_path], "missing: TLS"),
        (
            vec!["--tls-cert", &certificates.path("server.pem"), "--tls-key", &certificates.path("server-key.pem")],
            "missing: the token",
        ),
    ] {
        let mut args = vec!["--role", "relay", "--source", &source, "--listen", "0.0.0.0:7443"];
        args.extend(extra);
        let mut refused = Serve::start(args);
        let line = refused.log_line(&["not a loopback address"]);
        assert!(line.contains(missing), "{line}");
        assert_eq!(refused.wait().code(), Some(64));
    }

    let tls = ["--tls-cert", &certificates.path("server.pem"), "--tls-key", &certificates.path("server-key.pem")];
    let mut args = vec!["--token-file", &token_path];
    args.extend(tls);
    let relay = Relay::start(&source, &args);
    let ca = certificates.path("ca.pem");

    // A wrong token: the sidecar says why in its log, the relay counts it, nothing served.
    let dirs = ServeDirs::new();
    let wrong = Serve::start(
        dirs.args_from(format!("grpcs://{}", relay.addr()), &["--upstream-ca", &ca, "--upstream-token", "guess"]),
    );
    let line = wrong.log_line(&["upstream session ended"]);
    assert!(line.contains("refused the bearer token") && line.contains("UPSTREAM_TOKEN"), "{line}");
    relay.process.log_line(&["refused a request without the right bearer token"]);
    assert!(relay.metric("veltrix_unauthenticated_requests_total").await >= 1.0);

    // The right token, over gRPC with TLS and over long-poll with TLS.
    for scheme in ["grpcs", "https"] {
        let settings = RawSettings {
            upstream_ca: Some(ca.clone().into()),
            upstream_token_file: Some(token_file.clone()),
            ..relayed(format!("{scheme}://{}", relay.addr()), &[])
        };
        let sidecar = Sidecar::start_with(&[], settings).await;
        let mut client = sidecar.client().await;
        assert_eq!(get_json(&mut client, "tick").await.expect("served").0, json!({"hz": 30}), "{scheme}");
    }
}

/// One long-poll over plain HTTP/1.1, as any HTTP client would send it.
async fn long_poll(addr: &str, query: &str, token: Option<&str>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the relay");
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!("GET /v1/watch?{query} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    within("the long-poll's answer", stream.read_to_string(&mut response)).await.expect("read");
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or_else(|_| panic!("a JSON body: {body:?}")))
}

#[tokio::test]
async fn the_long_poll_protocol_over_plain_http() {
    let config = tempfile::tempdir().expect("temp dir");
    write(config.path(), "game/tick.json", r#"{"hz": 30}"#);
    write(config.path(), "ops/alerts.yaml", "page: true\n");
    let relay = Relay::start(&config.path().display().to_string(), &["--token", "s3cret", "--debounce", "20ms"]);
    let addr = relay.addr();

    let (code, body) = long_poll(&addr, "", None).await;
    assert_eq!(code, 401);
    assert!(body["error"].as_str().is_some_and(|error| error.contains("bearer token")), "{body}");
    let (code, _) = long_poll(&addr, "", Some("s3cre")).await;
    assert_eq!(code, 401);
    assert_eq!(relay.metric("veltrix_unauthenticated_requests_total").await, 2.0);

    let (code, body) = long_poll(&addr, "since=-4", Some("s3cret")).await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().is_some_and(|error| error.contains("since")), "{body}");

    let (code, snapshot) = long_poll(&addr, "prefix=game%2F", Some("s3cret")).await;
    assert_eq!(code, 200);
    assert_eq!(snapshot["kind"], "snapshot");
    assert_eq!(snapshot["documents"], json!([{"name": "game/tick.json", "content": r#"{"hz": 30}"#}]));
    let (epoch, revision) = (snapshot["epoch"].as_str().expect("epoch"), snapshot["revision"].as_i64().expect("rev"));

    // Nothing new: held for the wait, then "no_change" at the same revision.
    let started = std::time::Instant::now();
    let query = format!("prefix=game%2F&since={revision}&epoch={epoch}&wait=300ms");
    let (code, quiet) = long_poll(&addr, &query, Some("s3cret")).await;
    assert_eq!((code, &quiet["kind"], &quiet["revision"]), (200, &json!("no_change"), &json!(revision)));
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A change answers a waiting poll at once; a change outside the prefix does not.
    let waiting = tokio::spawn({
        let (addr, query) = (addr.clone(), query.replace("wait=300ms", "wait=20s"));
        async move { long_poll(&addr, &query, Some("s3cret")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    write(config.path(), "ops/alerts.yaml", "page: false\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a change outside the prefix answered the poll");
    std::fs::remove_file(config.path().join("game/tick.json")).expect("remove");
    let (code, changes) = within("the change", waiting).await.expect("poll task");
    assert_eq!((code, &changes["kind"]), (200, &json!("changes")));
    assert_eq!(changes["documents"], json!([{"name": "game/tick.json", "deleted": true}]));
    assert!(changes["revision"].as_i64() > Some(revision));

    // Another epoch's revision means nothing here: the whole state again.
    let (_, resync) = long_poll(&addr, &format!("since={revision}&epoch=elsewhere&wait=1s"), Some("s3cret")).await;
    assert_eq!(resync["kind"], "resync");
    assert_eq!(resync["documents"], json!([{"name": "ops/alerts.yaml", "content": "page: false\n"}]));
}

#[tokio::test]
async fn a_sidecar_that_stops_reading_holds_up_nobody_and_catches_up_with_one_resync() {
    use veltrix_sidecar::relay::proto::{
        WatchRequest, document::State, relay_service_client::RelayServiceClient, watch_response::Kind,
    };
    let config = tempfile::tempdir().expect("temp dir");
    // Large enough that a few unread messages fill the stream's flow-control window.
    let document = |seq: usize| json!({ "seq": seq, "padding": "x".repeat(60_000) }).to_string();
    write(config.path(), "big.json", &document(0));
    let relay = Relay::start(&config.path().display().to_string(), &["--history", "2", "--debounce", "10ms"]);
    let watch = |addr: String| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            // HTTP/2's smallest windows: a stream that is not read fills them at once.
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .expect("connect to the relay");
        let mut client = RelayServiceClient::new(channel).max_decoding_message_size(1 << 20);
        let request = WatchRequest { prefix: String::new(), start_revision: 0, epoch: String::new() };
        client.watch(request).await.expect("watch").into_inner()
    };
    let seq_of = |reply: &veltrix_sidecar::relay::proto::WatchResponse| {
        reply.documents.iter().find_map(|document| match &document.state {
            Some(State::Content(content)) => serde_json::from_slice::<Value>(content).ok()?["seq"].as_u64(),
            _ => None,
        })
    };

    let mut slow = watch(relay.addr()).await;
    let first = within("the slow stream's snapshot", slow.message()).await.expect("ok").expect("a message");
    assert_eq!((first.kind(), seq_of(&first)), (Kind::Snapshot, Some(0)));
    let mut fast = watch(relay.addr()).await;
    within("the fast stream's snapshot", fast.message()).await.expect("ok").expect("a message");

    // The slow stream reads nothing more; the fast one sees every change as it comes.
    for seq in 1..=12 {
        write(config.path(), "big.json", &document(seq));
        let seen = within("the fast stream to see the change", async {
            loop {
                let reply = fast.message().await.expect("ok").expect("a message");
                if let Some(seen) = seq_of(&reply) {
                    return seen;
                }
            }
        })
        .await;
        assert_eq!(seen, seq as u64);
    }

    // What the slow stream still has queued is bounded by flow control, not by the
    // changes it missed; then one RESYNC brings it to the latest state.
    let mut kinds = Vec::new();
    within("the slow stream to catch up", async {
        loop {
            let reply = slow.message().await.expect("ok").expect("a message");
            kinds.push(reply.kind());
            if seq_of(&reply) == Some(12) {
                return;
            }
        }
    })
    .await;
    assert!(kinds.len() < 12, "the slow stream was sent every change: {kinds:?}");
    assert!(kinds.contains(&Kind::Resync), "{kinds:?}");
    assert!(relay.metric("veltrix_relay_resyncs_total").await >= 1.0);
}

#[tokio::test]
async fn a_relay_follows_another_relay_in_its_epoch_and_streams_send_heartbeats() {
    use veltrix_sidecar::relay::proto::{WatchRequest, relay_service_client::RelayServiceClient, watch_response::Kind};
    let config = tempfile::tempdir().expect("temp dir");
    write(config.path(), "tick.json", r#"{"hz": 30}"#);
    let regional = Relay::start(&config.path().display().to_string(), &["--debounce", "10ms"]);
    let local = Relay::start(&format!("grpc://{}", regional.addr()), &["--progress-interval", "100ms"]);
    let sidecar = Sidecar::start_with(&[], relayed(format!("http://{}", local.addr()), &[])).await;
    let mut client = sidecar.client().await;
    assert_eq!(get_json(&mut client, "tick").await.expect("served").0, json!({"hz": 30}));

    write(config.path(), "tick.json", r#"{"hz": 60}"#);
    wait_for_value(&mut client, "tick", json!({"hz": 60})).await;
    // The second relay passes on the first one's epoch and revisions, so a sidecar may
    // resume on either.
    let (_, upstream) = long_poll(&regional.addr(), "", None).await;
    let (_, downstream) = long_poll(&local.addr(), "", None).await;
    assert_eq!((&upstream["epoch"], &upstream["revision"]), (&downstream["epoch"], &downstream["revision"]));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", local.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the relay");
    let revision = downstream["revision"].as_i64().expect("a revision");
    let request = WatchRequest {
        prefix: String::new(),
        start_revision: revision,
        epoch: downstream["epoch"].as_str().expect("an epoch").to_owned(),
    };
    let mut stream = RelayServiceClient::new(channel).watch(request).await.expect("watch").into_inner();
    let heartbeat = within("a heartbeat", stream.message()).await.expect("ok").expect("a message");
    assert_eq!((heartbeat.kind(), heartbeat.revision), (Kind::Progress, revision));
}

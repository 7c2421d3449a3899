//! The etcd source against real etcd servers: change-sets, outages, compaction, failover.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use veltrix_sidecar::{
    api::{proto, proto::watch_response::Kind},
    config::RawSettings,
};

use crate::{services::*, support::*};

const PREFIX: &str = "/veltrix/config/";

fn settings(endpoints: &[String]) -> RawSettings {
    RawSettings {
        source: Some(format!("etcd://{}{}", endpoints.join(","), PREFIX.trim_end_matches('/'))),
        backoff_min: Some("50ms".into()),
        backoff_max: Some("500ms".into()),
        connect_timeout: Some("500ms".into()),
        ..Default::default()
    }
}

async fn status(client: &mut Client) -> proto::StatusResponse {
    client.status(proto::StatusRequest {}).await.expect("status").into_inner()
}

async fn wait_for_status(
    client: &mut Client,
    what: &str,
    done: impl Fn(&proto::StatusResponse) -> bool,
) -> proto::StatusResponse {
    within(what, async {
        loop {
            let status = status(client).await;
            if done(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn puts_deletes_and_a_transaction_arrive_as_one_change_set_each_in_order() {
    let Some(etcd) = Etcd::start().await else { return };
    let mut writer = EtcdWriter::connect(etcd.client_port, PREFIX).await;
    writer.put("items.json", r#"{"sword": 40}"#).await;
    writer.put("loot.json", r#"{"dmg": "${items#/sword}"}"#).await;
    writer.put("temporary.json", "{}").await;
    let sidecar = Sidecar::start_with(&[], settings(&[etcd.endpoint()])).await;
    let mut client = sidecar.client().await;
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    let first = next_event(&mut stream).await;
    assert_eq!(
        values(&first),
        [("items".into(), json!({"sword": 40})), ("loot".into(), json!({"dmg": 40})), ("temporary".into(), json!({}))]
            .into()
    );

    writer.put("items.json", r#"{"sword": 45}"#).await;
    writer.delete("temporary.json").await;
    let txn_revision = writer
        .transaction(&[
            ("maps.yaml", Some("pool: [dunes]\n")),
            ("items.json", Some(r#"{"sword": 50}"#)),
            ("loot.json", None),
        ])
        .await;

    let put = next_event(&mut stream).await;
    assert_eq!((put.kind(), put.revision), (Kind::Change, 2));
    assert_eq!(values(&put), [("items".into(), json!({"sword": 45})), ("loot".into(), json!({"dmg": 45}))].into());
    let delete = next_event(&mut stream).await;
    assert_eq!((delete.revision, delete.deleted.clone()), (3, vec!["temporary".to_owned()]));
    let txn = next_event(&mut stream).await;
    assert_eq!(txn.revision, 4, "the transaction is one change-set");
    assert_eq!(
        values(&txn),
        [("items".into(), json!({"sword": 50})), ("maps".into(), json!({"pool": ["dunes"]}))].into()
    );
    assert_eq!(txn.deleted, ["loot"]);
    let status = status(&mut client).await;
    assert_eq!((status.upstream_kind.as_str(), status.upstream_revision), ("etcd", txn_revision));
    sidecar.stop().await;
}

#[tokio::test]
async fn an_etcd_outage_is_invisible_to_gets_and_writes_made_meanwhile_arrive_once_in_order() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let port = etcd.client_port;
    let mut writer = EtcdWriter::connect(port, PREFIX).await;
    writer.put("counter.json", r#"{"n": 0}"#).await;
    let sidecar = Sidecar::start_with(&[], settings(&[etcd.endpoint()])).await;
    let mut client = sidecar.client().await;
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    assert_eq!(next_event(&mut stream).await.kind(), Kind::Snapshot);

    // An engine keeps reading through the whole outage.
    let gets = Arc::new(AtomicU64::new(0));
    let reader = {
        let gets = gets.clone();
        let mut client = sidecar.client().await;
        tokio::spawn(async move {
            loop {
                get_json(&mut client, "counter").await.expect("every Get succeeds during the outage");
                gets.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    etcd.kill();
    let down = wait_for_status(&mut client, "the outage in Status", |status| !status.upstream_healthy).await;
    assert!(!down.upstream_error.is_empty());

    // Writes happen while the sidecar is cut off: etcd runs on the same data on a port
    // the sidecar does not know.
    let hidden_port = free_port();
    etcd.restart_on(hidden_port).await;
    let mut hidden = EtcdWriter::connect(hidden_port, PREFIX).await;
    for n in 1..=5 {
        hidden.put("counter.json", &format!(r#"{{"n": {n}}}"#)).await;
    }
    hidden.put("extra.json", r#"{"late": true}"#).await;
    drop(hidden);
    etcd.restart_on(port).await;

    let mut seen = Vec::new();
    while seen.len() < 6 {
        let change = next_event(&mut stream).await;
        assert_eq!(change.kind(), Kind::Change);
        seen.push(values(&change));
    }
    let expected: Vec<_> = (1..=5)
        .map(|n| [("counter".to_owned(), json!({ "n": n }))].into())
        .chain([[("extra".to_owned(), json!({"late": true}))].into()])
        .collect();
    assert_eq!(seen, expected, "every write, once, in revision order");
    wait_for_status(&mut client, "recovery in Status", |status| status.upstream_healthy).await;
    reader.abort();
    assert!(gets.load(Ordering::Relaxed) > 0);
    sidecar.stop().await;
}

#[tokio::test]
async fn compaction_past_the_sidecar_revision_relists_and_sends_the_difference_once() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let port = etcd.client_port;
    let mut writer = EtcdWriter::connect(port, PREFIX).await;
    writer.put("keep.json", r#"{"v": 1}"#).await;
    writer.put("change.json", r#"{"v": 1}"#).await;
    writer.put("remove.json", r#"{"v": 1}"#).await;
    let sidecar = Sidecar::start_with(&[], settings(&[etcd.endpoint()])).await;
    let mut client = sidecar.client().await;
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    assert_eq!(next_event(&mut stream).await.entries.len(), 3);

    etcd.kill();
    wait_for_status(&mut client, "the outage", |status| !status.upstream_healthy).await;
    let hidden_port = free_port();
    etcd.restart_on(hidden_port).await;
    let mut hidden = EtcdWriter::connect(hidden_port, PREFIX).await;
    hidden.put("change.json", r#"{"v": 2}"#).await;
    hidden.put("change.json", r#"{"v": 3}"#).await;
    hidden.delete("remove.json").await;
    let last = hidden.put("added.json", r#"{"v": 1}"#).await;
    hidden.compact(last).await;
    drop(hidden);
    etcd.restart_on(port).await;

    let difference = next_event(&mut stream).await;
    assert_eq!(difference.kind(), Kind::Change);
    assert_eq!(values(&difference), [("added".into(), json!({"v": 1})), ("change".into(), json!({"v": 3}))].into());
    assert_eq!(difference.deleted, ["remove"]);
    let after = wait_for_status(&mut client, "recovery", |status| status.upstream_healthy).await;
    assert_eq!(after.revision, difference.revision, "one change-set for the whole difference");
    assert_eq!(after.upstream_revision, last);
    sidecar.stop().await;
}

#[tokio::test]
async fn the_sidecar_follows_a_three_member_cluster_through_the_loss_of_its_leader() {
    let Some((mut members, _dir)) = Etcd::cluster(3).await else { return };
    let mut leader = None;
    for (index, member) in members.iter().enumerate() {
        if member.is_leader().await {
            leader = Some(index);
        }
    }
    let leader = leader.expect("a leader");
    // The leader first, so that the sidecar follows through it and must move on.
    let mut endpoints: Vec<String> = members.iter().map(Etcd::endpoint).collect();
    endpoints.swap(0, leader);
    let mut writer = EtcdWriter::connect(members[0].client_port, PREFIX).await;
    writer.put("mode.json", r#"{"mode": "casual"}"#).await;
    let sidecar = Sidecar::start_with(&[], settings(&endpoints)).await;
    let mut client = sidecar.client().await;
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    assert_eq!(next_event(&mut stream).await.kind(), Kind::Snapshot);

    members[leader].kill();

    let survivor = members.iter().find(|member| member.client_port != members[leader].client_port).expect("a survivor");
    let mut writer = EtcdWriter::connect(survivor.client_port, PREFIX).await;
    within("a write to the surviving members", async {
        // The first writes may fail while the remaining members elect a new leader.
        while writer.try_put("mode.json", r#"{"mode": "ranked"}"#).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let change = next_event(&mut stream).await;
    assert_eq!(values(&change), [("mode".into(), json!({"mode": "ranked"}))].into());
    sidecar.stop().await;
}

#[tokio::test]
async fn a_sidecar_killed_while_etcd_is_down_restarts_on_its_last_known_good_state() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let mut writer = EtcdWriter::connect(etcd.client_port, PREFIX).await;
    writer.put("items.json", r#"{"sword": 40}"#).await;
    writer.put("loot.json", r#"{"dmg": "${items#/sword}"}"#).await;
    let run = tempfile::tempdir().expect("temp dir");
    let state_dir = run.path().join("state");
    let socket = run.path().join("s.sock");
    let source = format!("etcd://{}{}", etcd.endpoint(), PREFIX.trim_end_matches('/'));
    let args = [
        "--listen",
        "none",
        "--source",
        &source,
        "--state-dir",
        state_dir.to_str().expect("utf-8"),
        "--socket",
        socket.to_str().expect("utf-8"),
        "--backoff-max",
        "200ms",
    ];
    let addr = format!("unix:{}", socket.display());

    let mut first = Serve::start(args);
    first.log_line(&["\"published\"", "\"revision\":1,"]);
    writer.put("items.json", r#"{"sword": 41}"#).await;
    first.log_line(&["\"published\"", "\"revision\":2,"]);
    first.kill();
    etcd.kill();

    let second = Serve::start(args);
    second.log_line(&["serving the last-known-good state"]);
    let mut client = connect_when_up(&addr).await;
    assert_eq!(get_json(&mut client, "loot").await.expect("served at once").0, json!({"dmg": 41}));
    let restarted = status(&mut client).await;
    assert!(restarted.serving_from_last_known_good);
    assert_eq!(restarted.revision, 2);
    drop(second);

    // One flipped byte, and the state is refused: nothing is served until etcd answers.
    let state_file = state_dir.join("last-known-good");
    let mut bytes = std::fs::read(&state_file).expect("read state");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&state_file, bytes).expect("write state");
    let third = Serve::start(args);
    let refused = third.log_line(&["ignoring the last-known-good state"]);
    assert!(refused.contains("checksum mismatch"), "{refused}");
    let mut client = connect_when_up(&addr).await;
    let unavailable = get_json(&mut client, "loot").await.expect_err("nothing to serve");
    assert_eq!(unavailable.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn tls_with_client_certificates_and_user_password_auth() {
    use veltrix_sidecar::source::etcd::api::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest,
        PutRequest, RangeRequest, auth_client::AuthClient, kv_client::KvClient,
    };
    if !available("etcd", "etcd") {
        return;
    }
    let certificates = Certificates::generate();
    let data = tempfile::tempdir().expect("temp dir");
    let (port, peer) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = KillOnDrop(
        std::process::Command::new("etcd")
            .args(["--name", "tls", "--data-dir"])
            .arg(data.path())
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("tls={peer_url}")])
            .args(["--cert-file", &certificates.path("server.pem"), "--key-file", &certificates.path("server-key.pem")])
            .args(["--trusted-ca-file", &certificates.path("ca.pem"), "--client-cert-auth"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start etcd"),
    );
    let channel = within("etcd over TLS", async {
        loop {
            let endpoint = tonic::transport::Endpoint::from_shared(client_url.clone())
                .expect("uri")
                .tls_config(certificates.client_config())
                .expect("tls");
            if let Ok(channel) = endpoint.connect().await {
                if KvClient::new(channel.clone())
                    .range(RangeRequest { key: b"x".to_vec(), ..Default::default() })
                    .await
                    .is_ok()
                {
                    return channel;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let mut auth = AuthClient::new(channel.clone());
    let _ = auth.role_add(AuthRoleAddRequest { name: "root".into() }).await;
    auth.user_add(AuthUserAddRequest { name: "root".into(), password: "s3cret".into(), ..Default::default() })
        .await
        .expect("add root");
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.expect("grant");
    auth.auth_enable(AuthEnableRequest {}).await.expect("enable auth");
    let token = auth
        .authenticate(AuthenticateRequest { name: "root".into(), password: "s3cret".into() })
        .await
        .expect("authenticate")
        .into_inner()
        .token;
    let mut put = tonic::Request::new(PutRequest {
        key: format!("{PREFIX}items.json").into_bytes(),
        value: br#"{"sword": 40}"#.to_vec(),
        ..Default::default()
    });
    put.metadata_mut().insert("token", token.parse().expect("ascii token"));
    KvClient::new(channel).put(put).await.expect("put with the token");

    let source = format!("etcd://127.0.0.1:{port}{}", PREFIX.trim_end_matches('/'));
    let with = |password: &str| RawSettings {
        source: Some(source.clone()),
        upstream_user: Some("root".into()),
        upstream_password: Some(password.into()),
        upstream_ca: Some(certificates.path("ca.pem").into()),
        upstream_cert: Some(certificates.path("client.pem").into()),
        upstream_key: Some(certificates.path("client-key.pem").into()),
        ..settings(&[])
    };
    let sidecar = Sidecar::start_with(&[], with("s3cret")).await;
    let mut client = sidecar.client().await;
    assert_eq!(get_json(&mut client, "items").await.expect("served").0, json!({"sword": 40}));
    sidecar.stop().await;

    // A wrong password is an upstream error that says so.
    let run = tempfile::tempdir().expect("temp dir");
    let socket = run.path().join("s.sock");
    let wrong = Serve::start([
        "--listen",
        "none",
        "--socket",
        socket.to_str().expect("utf-8"),
        "--source",
        &source,
        "--upstream-user",
        "root",
        "--upstream-password",
        "wrong",
        "--upstream-ca",
        &certificates.path("ca.pem"),
        "--upstream-cert",
        &certificates.path("client.pem"),
        "--upstream-key",
        &certificates.path("client-key.pem"),
    ]);
    let line = wrong.log_line(&["upstream session ended"]);
    assert!(line.contains("etcd authentication"), "{line}");
    assert!(line.contains("authentication failed"), "{line}");
}

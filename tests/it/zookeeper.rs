//! The ZooKeeper source against a real ZooKeeper server.

use std::{process::Command, time::Duration};

use serde_json::json;
use veltrix_sidecar::{
    api::{proto, proto::watch_response::Kind},
    client,
    config::RawSettings,
};

use crate::{services::*, support::*};

const ROOT: &str = "/veltrix/config";

#[tokio::test]
async fn creates_sets_and_deletes_in_the_subtree_arrive_as_change_sets() {
    let Some(zookeeper) = ZooKeeper::start().await else { return };
    let zk = zookeeper.connect().await;
    zk_put(&zk, &format!("{ROOT}/items.json"), r#"{"sword": 40}"#).await;
    zk_put(&zk, &format!("{ROOT}/loot/chest.json"), r#"{"dmg": "${items#/sword}"}"#).await;
    zk_put(&zk, "/elsewhere.json", "{}").await;
    let settings = RawSettings {
        source: Some(format!("zk://{}{ROOT}", zookeeper.servers())),
        backoff_min: Some("50ms".into()),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&[], settings).await;
    let mut client = sidecar.client().await;
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    let first = next_event(&mut stream).await;
    assert_eq!(
        values(&first),
        [("items".into(), json!({"sword": 40})), ("loot/chest".into(), json!({"dmg": 40}))].into()
    );

    zk_put(&zk, &format!("{ROOT}/maps/rotation.yaml"), "pool: [dunes]\n").await;
    let created = next_event(&mut stream).await;
    assert_eq!(values(&created), [("maps/rotation".into(), json!({"pool": ["dunes"]}))].into());

    zk_put(&zk, &format!("{ROOT}/items.json"), r#"{"sword": 45}"#).await;
    let set = next_event(&mut stream).await;
    assert_eq!(
        values(&set),
        [("items".into(), json!({"sword": 45})), ("loot/chest".into(), json!({"dmg": 45}))].into()
    );

    zk.delete(&format!("{ROOT}/maps/rotation.yaml"), None).await.expect("delete");
    let deleted = next_event(&mut stream).await;
    assert_eq!((deleted.kind(), deleted.deleted.clone()), (Kind::Change, vec!["maps/rotation".to_owned()]));
    let status = client.status(proto::StatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.upstream_kind, "zookeeper");
    assert!(status.upstream_revision > 0, "the zxid is carried into Status");
    sidecar.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_survived_and_what_changed_meanwhile_arrives() {
    let Some(zookeeper) = ZooKeeper::start().await else { return };
    let zk = zookeeper.connect().await;
    zk_put(&zk, &format!("{ROOT}/items.json"), r#"{"sword": 40}"#).await;
    zk_put(&zk, &format!("{ROOT}/gone.json"), "{}").await;
    let run = tempfile::tempdir().expect("temp dir");
    let socket = run.path().join("s.sock");
    let source = format!("zk://{}{ROOT}", zookeeper.servers());
    let serve = Serve::start([
        "--listen",
        "none",
        "--session-timeout",
        "500ms",
        "--backoff-min",
        "50ms",
        "--backoff-max",
        "200ms",
        "--source",
        &source,
        "--socket",
        socket.to_str().expect("utf-8"),
    ]);
    let addr = format!("unix:{}", socket.display());
    let value_of = |key: &'static str| {
        let addr = addr.clone();
        async move {
            let mut api = client::connect(&addr).await.ok()?;
            get_json(&mut api, key).await.ok().map(|(value, _)| value)
        }
    };
    within("the first snapshot", async {
        while value_of("items").await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Frozen past its session timeout: ZooKeeper expires the session meanwhile.
    let pid = serve.pid();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    zk_put(&zk, &format!("{ROOT}/items.json"), r#"{"sword": 99}"#).await;
    zk.delete(&format!("{ROOT}/gone.json"), None).await.expect("delete");
    zk_put(&zk, &format!("{ROOT}/new.json"), r#"{"fresh": true}"#).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());

    within("the changes made during the expired session", async {
        while value_of("items").await != Some(json!({"sword": 99})) || value_of("new").await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(value_of("gone").await, None, "deleted while the session was gone");
    // The session did end, and a new one listed the subtree again.
    serve.log_line(&["upstream session ended"]);
    serve.log_line(&["listed zookeeper subtree"]);
}

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

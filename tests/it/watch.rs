//! Watch: initial state, change-sets in order, resumes, RESYNC, heartbeats, slow readers,
//! and shutdown.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_stream::StreamExt;
use veltrix_sidecar::{
    api::{ApiLimits, proto, proto::watch_response::Kind},
    store::StoreLimits,
};

use crate::support::*;

const LIMITS: StoreLimits = StoreLimits { history: 100, watch_backlog: 16 };

fn prefixes(prefixes: &[&str], start_revision: u64) -> proto::WatchRequest {
    proto::WatchRequest {
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        start_revision,
        ..Default::default()
    }
}

#[tokio::test]
async fn starts_with_the_selection_then_sends_each_change_set_in_order() {
    let mut server = StoreServer::start(LIMITS, default_api_limits()).await;
    server.publish(&[("mm/queues", Some(json!({"q": 1}))), ("mm/rules", Some(json!({}))), ("maps/x", Some(json!({})))]);
    let mut client = server.client().await;
    let mut stream =
        watch(&mut client, proto::WatchRequest { keys: vec!["maps/later".into()], ..prefixes(&["mm/"], 0) }).await;

    let first = next_event(&mut stream).await;
    assert_eq!((first.kind(), first.revision), (Kind::Snapshot, 1));
    assert_eq!(values(&first), [("mm/queues".into(), json!({"q": 1})), ("mm/rules".into(), json!({}))].into());

    server.publish(&[("mm/queues", Some(json!({"q": 2}))), ("maps/x", Some(json!({"x": 1})))]);
    server.publish(&[("maps/x", Some(json!({"x": 2})))]); // not followed: nothing is sent
    server.publish(&[("mm/rules", None), ("maps/later", Some(json!({"new": true})))]);

    let change = next_event(&mut stream).await;
    assert_eq!((change.kind(), change.revision), (Kind::Change, 2));
    assert_eq!(values(&change), [("mm/queues".into(), json!({"q": 2}))].into());
    assert!(change.deleted.is_empty());
    assert_eq!(change.entries[0].mod_revision, 2);

    let change = next_event(&mut stream).await;
    assert_eq!((change.kind(), change.revision), (Kind::Change, 4), "revision 3 touched nothing followed");
    assert_eq!(values(&change), [("maps/later".into(), json!({"new": true}))].into(), "an exact key that appeared");
    assert_eq!(change.deleted, ["mm/rules"]);
}

#[tokio::test]
async fn a_resume_delivers_exactly_the_missed_change_sets() {
    let mut server = StoreServer::start(LIMITS, default_api_limits()).await;
    for n in 1..=5 {
        server.publish(&[("k", Some(json!({ "n": n })))]);
    }
    let mut client = server.client().await;
    let mut stream = watch(&mut client, prefixes(&[], 2)).await;
    for expected in 3..=5 {
        let change = next_event(&mut stream).await;
        assert_eq!((change.kind(), change.revision), (Kind::Change, expected));
        assert_eq!(values(&change)["k"], json!({ "n": expected }));
    }
    server.publish(&[("k", Some(json!({"n": 6})))]);
    let live = next_event(&mut stream).await;
    assert_eq!((live.kind(), live.revision), (Kind::Change, 6), "no duplicate, no gap between replay and live");

    let mut current = watch(&mut client, prefixes(&[], 6)).await;
    server.publish(&[("k", Some(json!({"n": 7})))]);
    let next = next_event(&mut current).await;
    assert_eq!((next.kind(), next.revision), (Kind::Change, 7), "a client that is current gets only what follows");
}

#[tokio::test]
async fn a_resume_from_before_the_history_gets_a_resync_with_the_full_state() {
    let mut server = StoreServer::start(StoreLimits { history: 3, watch_backlog: 16 }, default_api_limits()).await;
    server.publish(&[("gone", Some(json!({})))]);
    for n in 2..=10 {
        server.publish(&[("k", Some(json!({ "n": n })))]);
    }
    server.publish(&[("gone", None)]);
    let mut client = server.client().await;
    for start in [2, 99] {
        let mut stream = watch(&mut client, prefixes(&[], start)).await;
        let resync = next_event(&mut stream).await;
        assert_eq!((resync.kind(), resync.revision), (Kind::Resync, 11), "from {start}");
        assert_eq!(values(&resync), [("k".into(), json!({"n": 10}))].into(), "the full state replaces the client's");
    }
}

#[tokio::test]
async fn idle_streams_get_progress_heartbeats_with_the_revision() {
    let api = ApiLimits { progress_interval: Duration::from_millis(100), ..default_api_limits() };
    let mut server = StoreServer::start(LIMITS, api).await;
    server.publish(&[("a", Some(json!({})))]);
    server.publish(&[("b", Some(json!({})))]);
    let mut client = server.client().await;
    let mut stream = watch(&mut client, prefixes(&["a"], 0)).await;
    assert_eq!(next_event(&mut stream).await.kind(), Kind::Snapshot);
    let heartbeat = within("a heartbeat", stream.next()).await.expect("open").expect("ok");
    assert_eq!((heartbeat.kind(), heartbeat.revision), (Kind::Progress, 2));
}

/// Large values fill the slow client's HTTP/2 windows quickly.
fn big_value(n: u64) -> Value {
    json!({ "n": n, "padding": "x".repeat(32 * 1024) })
}

#[tokio::test]
async fn a_slow_watcher_does_not_delay_a_fast_one_and_is_collapsed_into_a_resync() {
    const CHANGES: u64 = 300;
    let mut server = StoreServer::start(LIMITS, default_api_limits()).await;
    server.publish(&[("k", Some(big_value(0)))]);

    // Separate connections, as separate engine processes would have.
    let mut slow_client = server.client().await;
    let mut fast_client = server.client().await;
    let mut slow = watch(&mut slow_client, prefixes(&[], 0)).await;
    assert_eq!(next_event(&mut slow).await.kind(), Kind::Snapshot);
    let mut fast = watch(&mut fast_client, prefixes(&[], 0)).await;
    assert_eq!(next_event(&mut fast).await.kind(), Kind::Snapshot);

    // The fast watcher sees every change-set while the slow one reads nothing.
    for n in 1..=CHANGES {
        let revision = server.publish(&[("k", Some(big_value(n)))]);
        let change = next_event(&mut fast).await;
        assert_eq!((change.kind(), change.revision), (Kind::Change, revision));
    }

    // The slow one catches up through one RESYNC instead of 300 queued messages.
    let mut received = 0;
    let mut resyncs = 0;
    let latest = loop {
        let message = next_event(&mut slow).await;
        received += 1;
        if message.kind() == Kind::Resync {
            resyncs += 1;
        }
        if message.revision == CHANGES + 1 {
            break message;
        }
    };
    assert_eq!(resyncs, 1, "collapsed once");
    assert!(received < CHANGES / 2, "{received} messages: the backlog was not bounded");
    assert_eq!(values(&latest)["k"]["n"], json!(CHANGES));
    assert!(server.store.lagged_resyncs.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn a_file_edit_reaches_a_watcher_as_one_change_with_a_higher_revision() {
    let sidecar = Sidecar::start(&[("mm/queues.yaml", "size: 4\n"), ("mm/rules.json", "{}")]).await;
    let mut client = sidecar.unix_client().await;
    let mut stream = watch(&mut client, prefixes(&["mm/"], 0)).await;
    let first = next_event(&mut stream).await;
    assert_eq!((first.kind(), first.revision, first.entries.len()), (Kind::Snapshot, 1, 2));

    sidecar.write("mm/queues.yaml", "size: 8\n");
    let change = next_event(&mut stream).await;
    assert_eq!((change.kind(), change.revision), (Kind::Change, 2));
    assert_eq!(values(&change), [("mm/queues".into(), json!({"size": 8}))].into());

    std::fs::remove_file(sidecar.path("mm/rules.json")).expect("delete");
    let change = next_event(&mut stream).await;
    assert_eq!(
        (change.kind(), change.revision, change.deleted.clone()),
        (Kind::Change, 3, vec!["mm/rules".to_owned()])
    );

    // Shutdown ends the stream cleanly instead of cutting it.
    let socket = sidecar.socket.clone();
    sidecar.stop().await;
    let end = within("the stream to end", async {
        loop {
            match stream.next().await {
                Some(Ok(message)) if message.kind() == Kind::Progress => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(end.is_none(), "ended with {end:?}");
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[tokio::test]
async fn a_revision_from_another_history_gets_a_resync_whatever_its_number() {
    let mut server = StoreServer::start(LIMITS, default_api_limits()).await;
    for n in 1..=5 {
        server.publish(&[("k", Some(json!({ "n": n })))]);
    }
    let mut client = server.client().await;
    let epoch = client.status(proto::StatusRequest {}).await.expect("status").into_inner().epoch;
    assert_ne!(epoch, 0);

    let mut same = watch(&mut client, proto::WatchRequest { start_revision: 3, epoch, ..Default::default() }).await;
    let next = next_event(&mut same).await;
    assert_eq!((next.kind(), next.revision, next.epoch), (Kind::Change, 4, epoch));

    // A sidecar restarted without its saved state starts another history: the same
    // numbers mean other contents there.
    for start_revision in [3, 5] {
        let request = proto::WatchRequest { start_revision, epoch: epoch ^ 1, ..Default::default() };
        let mut other = watch(&mut client, request).await;
        let resync = next_event(&mut other).await;
        assert_eq!((resync.kind(), resync.revision), (Kind::Resync, 5), "from {start_revision}");
        assert_eq!(values(&resync)["k"], json!({"n": 5}));
    }
}

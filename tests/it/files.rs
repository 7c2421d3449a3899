//! The file source: what reaches the engine when files are edited, broken or hostile.

use serde_json::json;
use tonic::Code;
use veltrix_sidecar::api::{proto, proto::watch_response::Kind};

use crate::support::*;

async fn status(client: &mut Client) -> proto::StatusResponse {
    client.status(proto::StatusRequest {}).await.expect("status").into_inner()
}

#[tokio::test]
async fn a_broken_file_is_rejected_alone_while_its_last_good_value_is_served() {
    let sidecar =
        Sidecar::start(&[("economy/prices.json", r#"{"sword": 100}"#), ("maps.toml", "pool = [\"a\"]\n")]).await;
    let mut client = sidecar.client().await;
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    assert_eq!(next_event(&mut stream).await.kind(), Kind::Snapshot);

    sidecar.write("economy/prices.json", "{\n  \"sword\": 120,\n  \"shield\" 80\n}\n");
    sidecar.write("maps.toml", "pool = [\"a\", \"b\"]\n");
    let mut rejected = None;
    let mut changed = None;
    while rejected.is_none() || changed.is_none() {
        let event = next_event(&mut stream).await;
        match event.kind() {
            Kind::Rejected => rejected = Some(event),
            Kind::Change => changed = Some(event),
            other => panic!("unexpected {other:?}"),
        }
    }
    let rejection = &rejected.expect("rejected").rejections[0];
    assert_eq!(
        (rejection.key.as_str(), rejection.origin.as_str(), rejection.line),
        ("economy/prices", "economy/prices.json", 3)
    );
    assert!(rejection.reason.contains("expected `:`"), "{rejection:?}");
    assert!(rejection.serving_previous);
    assert_eq!(
        values(&changed.expect("changed")),
        [("maps".into(), json!({"pool": ["a", "b"]}))].into(),
        "the good file still goes through"
    );

    assert_eq!(get_json(&mut client, "economy/prices").await.expect("still served").0, json!({"sword": 100}));
    let rejections = status(&mut client).await.rejections;
    assert_eq!(rejections.len(), 1);
    assert_eq!((rejections[0].origin.as_str(), rejections[0].line), ("economy/prices.json", 3));

    sidecar.write("economy/prices.json", r#"{"sword": 120, "shield": 80}"#);
    let fixed = next_event(&mut stream).await;
    assert_eq!(fixed.kind(), Kind::Change);
    assert_eq!(values(&fixed), [("economy/prices".into(), json!({"sword": 120, "shield": 80}))].into());
    assert!(status(&mut client).await.rejections.is_empty());
    sidecar.stop().await;
}

/// Deterministic bytes that are neither UTF-8 nor any config format.
fn garbage(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

#[tokio::test]
async fn empty_and_garbage_files_are_rejected_with_file_and_reason() {
    let sidecar = Sidecar::start(&[("good.yaml", "ok: true\n")]).await;
    sidecar.write("empty.json", "");
    std::fs::write(sidecar.path("garbage.yaml"), garbage(10 << 20)).expect("write 10 MB");
    std::fs::write(sidecar.path("text.toml"), "this is not toml\n".repeat(1000)).expect("write");
    let mut client = sidecar.client().await;
    let rejections = within("three rejections", async {
        loop {
            let rejections = status(&mut client).await.rejections;
            if rejections.len() == 3 {
                return rejections;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let summary: Vec<(String, u32, String)> =
        rejections.iter().map(|r| (r.origin.clone(), r.line, r.reason.clone())).collect();
    assert_eq!(summary[0].0, "empty.json");
    assert_eq!(summary[0].2, "document is empty");
    assert_eq!(summary[1].0, "garbage.yaml");
    assert_eq!((summary[1].1, summary[1].2.as_str()), (1, "text is not valid UTF-8"));
    assert_eq!((summary[2].0.as_str(), summary[2].1), ("text.toml", 1));
    for key in ["empty", "garbage", "text"] {
        assert_eq!(get_json(&mut client, key).await.expect_err(key).code(), Code::NotFound, "{key} never served");
    }
    assert_eq!(get_json(&mut client, "good").await.expect("served").0, json!({"ok": true}));
    sidecar.stop().await;
}

#[tokio::test]
async fn a_file_over_the_size_limit_is_rejected_unread() {
    let extra = veltrix_sidecar::config::RawSettings { max_document_bytes: Some(1024), ..Default::default() };
    let sidecar = Sidecar::start_with(&[("small.json", "{}")], extra).await;
    sidecar.write("large.json", &format!("{{\"a\": \"{}\"}}", "x".repeat(2000)));
    let mut client = sidecar.client().await;
    let rejection = within("the rejection", async {
        loop {
            if let Some(rejection) = status(&mut client).await.rejections.pop() {
                return rejection;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(rejection.origin, "large.json");
    assert_eq!(rejection.reason, "file is 2009 bytes, over the limit of 1024");
    sidecar.stop().await;
}

#[tokio::test]
async fn symlinks_are_followed_inside_the_directory_only() {
    let outside = tempfile::tempdir().expect("temp dir");
    std::fs::write(outside.path().join("secret.json"), r#"{"password": "hunter2"}"#).expect("write");
    let sidecar = Sidecar::start(&[("real/items.json", r#"{"sword": 1}"#)]).await;
    std::os::unix::fs::symlink(outside.path().join("secret.json"), sidecar.path("leak.json")).expect("symlink");
    std::os::unix::fs::symlink(sidecar.path("real/items.json"), sidecar.path("alias.json")).expect("symlink");

    let mut client = sidecar.client().await;
    let alias = within("the inside link", async {
        loop {
            if let Ok((value, _)) = get_json(&mut client, "alias").await {
                return value;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(alias, json!({"sword": 1}));
    assert_eq!(get_json(&mut client, "leak").await.expect_err("not followed").code(), Code::NotFound);
    let rejections = status(&mut client).await.rejections;
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(rejections[0].origin, "leak.json");
    assert!(rejections[0].reason.contains("points outside the config directory; not followed"), "{rejections:?}");
    sidecar.stop().await;
}

#[tokio::test]
async fn new_directories_hidden_files_and_other_suffixes() {
    let sidecar = Sidecar::start(&[("a.json", "{}")]).await;
    let mut client = sidecar.client().await;
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    assert_eq!(next_event(&mut stream).await.kind(), Kind::Snapshot);

    sidecar.write(".a.json.swp", "not config");
    sidecar.write("notes.txt", "not config");
    sidecar.write("deep/new/dir/module.yml", "x: 1\n");
    let change = next_event(&mut stream).await;
    assert_eq!(values(&change), [("deep/new/dir/module".into(), json!({"x": 1}))].into());
    let listed = client.list(proto::ListRequest::default()).await.expect("list").into_inner();
    let keys: Vec<&str> = listed.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["a", "deep/new/dir/module"]);
    sidecar.stop().await;
}

#[tokio::test]
async fn a_vanished_directory_is_an_upstream_error_and_the_last_good_config_is_served() {
    let extra = veltrix_sidecar::config::RawSettings { rescan_interval: Some("100ms".into()), ..Default::default() };
    let sidecar = Sidecar::start_with(&[("a.json", r#"{"a": 1}"#), ("b.json", "{}")], extra).await;
    let root = sidecar.dir.path().to_owned();
    let aside = root.with_extension("aside");
    std::fs::rename(&root, &aside).expect("move the directory away");

    let mut client = sidecar.client().await;
    let down = within("the upstream to be reported down", async {
        loop {
            let status = status(&mut client).await;
            if !status.upstream_healthy {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(down.upstream_error.contains("No such file or directory"), "{down:?}");
    assert_eq!(get_json(&mut client, "a").await.expect("still served").0, json!({"a": 1}));
    assert_eq!(down.keys, 2);

    // What changed while it was gone, deletions included, is picked up when it returns.
    std::fs::remove_file(aside.join("b.json")).expect("delete");
    std::fs::rename(&aside, &root).expect("move it back");
    within("the upstream to recover", async {
        loop {
            let status = status(&mut client).await;
            if status.upstream_healthy && status.keys == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(get_json(&mut client, "b").await.expect_err("deleted meanwhile").code(), Code::NotFound);
    sidecar.stop().await;
}

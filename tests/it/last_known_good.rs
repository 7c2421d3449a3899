//! The last known good state: served at once after a restart while the upstream is down,
//! reconciled when the upstream returns, and never trusted when damaged.

use std::{process::Command, time::Duration};

use serde_json::json;
use tonic::Code;
use veltrix_sidecar::{api::proto, config::RawSettings};

use crate::support::*;

async fn status(client: &mut Client) -> proto::StatusResponse {
    client.status(proto::StatusRequest {}).await.expect("status").into_inner()
}

#[tokio::test]
async fn a_restarted_sidecar_serves_the_last_known_good_state_until_the_upstream_returns() {
    let config = tempfile::tempdir().expect("temp dir");
    let state = tempfile::tempdir().expect("temp dir");
    write(config.path(), "mm.yaml", "wait: 60\n");
    write(config.path(), "items.json", r#"{"sword": 40}"#);
    write(config.path(), "loot.json", r#"{"dmg": "${items#/sword}"}"#);
    let settings = || RawSettings {
        source: Some(config.path().display().to_string()),
        state_dir: Some(state.path().to_owned()),
        rescan_interval: Some("100ms".into()),
        ..Default::default()
    };

    let first = Sidecar::start_with(&[], settings()).await;
    write(config.path(), "items.json", r#"{"sword": 45}"#);
    let mut client = first.client().await;
    within("the edit", async {
        while get_json(&mut client, "loot").await.ok().map(|(value, _)| value) != Some(json!({"dmg": 45})) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let before = status(&mut client).await;
    let revision = before.revision;
    first.stop().await;

    // The upstream is gone while the sidecar restarts.
    let aside = config.path().with_extension("aside");
    std::fs::rename(config.path(), &aside).expect("move the config away");
    let second = Sidecar::start_with(&[], settings()).await;
    let mut client = second.client().await;
    assert_eq!(get_json(&mut client, "loot").await.expect("served from disk").0, json!({"dmg": 45}));
    assert_eq!(get_json(&mut client, "mm").await.expect("served from disk").0, json!({"wait": 60}));
    let restarted = status(&mut client).await;
    assert!(restarted.serving_from_last_known_good);
    assert_eq!(restarted.revision, revision, "revisions continue from the saved state");
    assert_eq!(restarted.epoch, before.epoch, "in the same history");
    let down = within("the outage to be reported", async {
        loop {
            let status = status(&mut client).await;
            if !status.upstream_healthy && !status.upstream_error.is_empty() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(down.serving_from_last_known_good);

    // It comes back changed: one module deleted, one edited.
    std::fs::remove_file(aside.join("mm.yaml")).expect("delete");
    write(&aside, "items.json", r#"{"sword": 50}"#);
    std::fs::rename(&aside, config.path()).expect("move it back");
    let back = within("the upstream to return", async {
        loop {
            let status = status(&mut client).await;
            // Health is recorded just before the change-set is published: wait for both.
            if status.upstream_healthy && !status.serving_from_last_known_good && status.revision > revision {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(back.epoch, before.epoch);
    assert_eq!(get_json(&mut client, "loot").await.expect("served").0, json!({"dmg": 50}));
    assert_eq!(get_json(&mut client, "mm").await.expect_err("deleted upstream").code(), Code::NotFound);
    second.stop().await;
}

#[test]
fn a_damaged_state_file_is_refused_with_a_clear_log_line() {
    const BIN: &str = env!("CARGO_BIN_EXE_veltrix-sidecar");
    let state = tempfile::tempdir().expect("temp dir");
    let run = tempfile::tempdir().expect("temp dir");
    let missing = run.path().join("no-config-here");
    let socket = run.path().join("s.sock");
    // A valid header over a body whose checksum does not match.
    std::fs::write(state.path().join("last-known-good"), b"veltrix-state 1 00000000 2\n{}").expect("write");

    let serve = Serve::start([
        "--listen",
        "none",
        "--source",
        missing.to_str().expect("utf-8"),
        "--state-dir",
        state.path().to_str().expect("utf-8"),
        "--socket",
        socket.to_str().expect("utf-8"),
    ]);
    let refused = serve.log_line(&["ignoring the last-known-good state"]);
    let addr = format!("unix:{}", socket.display());
    let deadline = std::time::Instant::now() + DEADLINE;
    let answer = loop {
        let get = Command::new(BIN).args(["get", "anything", "--addr", &addr]).output().expect("get");
        let stderr = String::from_utf8_lossy(&get.stderr).into_owned();
        // Until the server runs, the client sees transport errors; then a gRPC status.
        if stderr.contains("code: ") && !stderr.contains("transport error") || std::time::Instant::now() > deadline {
            break stderr;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(serve);

    assert!(refused.contains("is corrupt: checksum mismatch"), "{refused}");
    assert!(refused.contains("last-known-good"), "{refused}");
    assert!(answer.contains("no configuration loaded yet"), "nothing is served from a damaged state: {answer}");
}

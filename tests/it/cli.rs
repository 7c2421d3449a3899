//! The real binary: exit code 64 on bad settings, the client commands against a running
//! `serve`, and a clean exit on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::support::{KillOnDrop, Serve};

const BIN: &str = env!("CARGO_BIN_EXE_veltrix-sidecar");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("VELTRIX_ADDR").output().expect("run the binary")
}

#[test]
fn bad_settings_exit_64_with_a_message_naming_the_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().to_str().expect("utf-8 path");
    let settings_file = dir.path().join("sidecar.toml");
    std::fs::write(&settings_file, "listen = \"127.0.0.1:0\"\nsocket = \"none\"\nhistroy = 5\n").expect("write");
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--source", source, "--listen", "0.0.0.0:7070"], "0.0.0.0:7070 is not a loopback address"),
        (&["serve", "--source", "/no/such/dir", "--socket", "none"], "source: /no/such/dir is not a directory"),
        (&["serve", "--source", "consul://127.0.0.1:8500/cfg"], "unsupported scheme \"consul\""),
        (
            &["serve", "--source", source, "--progress-interval", "soon"],
            "progress-interval: \"soon\" is not a duration",
        ),
        (&["serve", "--source", source, "--label", "region"], "label: \"region\" is not KEY=VALUE"),
        (
            &["serve", "--config", settings_file.to_str().expect("utf-8"), "--source", source],
            "sidecar.toml:3: unknown field `histroy`",
        ),
        (&["serve", "--no-such-flag"], "unexpected argument '--no-such-flag'"),
    ];
    for (args, message) in cases {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr:?} should say {message:?}");
    }
}

fn wait_for_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the sidecar did not create {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn client_commands_against_a_running_sidecar_and_sigterm() {
    let config = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(config.path().join("matchmaking")).expect("mkdir");
    std::fs::write(config.path().join("matchmaking/queues.yaml"), "solo:\n  size: 1\n").expect("write");
    std::fs::write(config.path().join("features.json"), r#"{"night_mode": true}"#).expect("write");
    let run_dir = tempfile::tempdir().expect("temp dir");
    let socket = run_dir.path().join("sidecar.sock");
    let mut serve = Serve::start([
        "--listen",
        "none",
        "--debounce",
        "20ms",
        "--source",
        config.path().to_str().expect("utf-8"),
        "--socket",
        socket.to_str().expect("utf-8"),
    ]);
    wait_for_socket(&socket);
    let addr = format!("unix:{}", socket.display());
    let mode = std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o660));

    let output = run(&["get", "matchmaking/queues", "--addr", &addr]);
    assert!(output.status.success(), "{output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("get prints JSON");
    assert_eq!(value, serde_json::json!({"solo": {"size": 1}}));

    let output = run(&["--addr", &addr, "list"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "features\t1\nmatchmaking/queues\t1\n");

    let output = run(&["status", "--addr", &addr]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("revision:  1") && stdout.contains("rejected:  none"), "{stdout}");

    let output = run(&["get", "nope", "--addr", &addr]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("key nope not found"), "{output:?}");

    let mut watch = KillOnDrop(
        Command::new(BIN)
            .args(["watch", "matchmaking/", "--addr", &addr])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start watch"),
    );
    let mut lines = BufReader::new(watch.0.stdout.take().expect("stdout")).lines();
    let mut next_line = || lines.next().expect("a line").expect("utf-8");
    assert_eq!(next_line(), "[1] snapshot: 1 keys");
    assert_eq!(next_line(), r#"[1] put matchmaking/queues {"solo":{"size":1}}"#);
    std::fs::write(config.path().join(".queues.tmp"), "solo:\n  size: 2\n").expect("write");
    std::fs::rename(config.path().join(".queues.tmp"), config.path().join("matchmaking/queues.yaml")).expect("save");
    assert_eq!(next_line(), r#"[2] put matchmaking/queues {"solo":{"size":2}}"#);
    drop(watch);

    let killed = Command::new("kill").args(["-TERM", &serve.pid()]).status().expect("kill");
    assert!(killed.success());
    let status = serve.wait();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");
    assert!(!socket.exists(), "the socket file is removed");
}

#[tokio::test]
async fn bench_load_counts_what_it_sent_and_watch_fan_out_sees_every_change() {
    let sidecar = crate::support::Sidecar::start(&[("server/tick.yaml", "rate: 30\n")]).await;
    let output = tokio::task::spawn_blocking({
        let addr = sidecar.addr.clone();
        move || run(&["bench", "load", "--addr", &addr, "--key", "server/tick", "--requests", "500", "--json"])
    })
    .await
    .expect("bench");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!((report["requests"].as_u64(), report["errors"].as_u64()), (Some(500), Some(0)));
    assert!(
        report["latency_us"]["p99"].as_u64().unwrap_or(0) >= report["latency_us"]["p50"].as_u64().unwrap_or(u64::MAX)
    );

    let watch = tokio::task::spawn_blocking({
        let addr = sidecar.addr.clone();
        move || {
            let args = [
                "bench",
                "load",
                "--rpc",
                "watch",
                "--addr",
                &addr,
                "--key",
                "server/tick",
                "--concurrency",
                "50",
                "--duration",
                "3s",
                "--json",
            ];
            run(&args)
        }
    });
    let mut client = sidecar.client().await;
    crate::support::within("the bench's 50 streams", async {
        loop {
            let status =
                client.status(veltrix_sidecar::api::proto::StatusRequest {}).await.expect("status").into_inner();
            if status.watchers == 50 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for rate in [31, 32, 33] {
        sidecar.write("server/tick.yaml", &format!("rate: {rate}\n"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let output = watch.await.expect("bench");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["streams"].as_u64(), Some(50));
    assert_eq!(report["change_sets"].as_u64(), Some(3), "{report}");
    assert_eq!(report["change_sets_seen_by_every_stream"].as_u64(), Some(3), "{report}");
    sidecar.stop().await;
}

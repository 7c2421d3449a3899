//! The admin server: metrics that count exactly the requests made, probes, redacted
//! debug views, and the log level changed at run time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use veltrix_sidecar::api::proto;

use crate::{services::available, support::*};

/// One HTTP/1.1 request with `Connection: close`; the status code and the body.
pub async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the admin server");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

pub fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| labels.iter().all(|(label, value)| sample.labels.get(label) == Some(*value)))
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => value,
            _ => f64::NAN,
        })
        .sum()
}

const FILES: &[(&str, &str)] = &[
    ("items.json", r#"{"sword": {"damage": 40}}"#),
    ("loot.json", r#"{"dmg": "${items#/sword/damage}"}"#),
    ("db.yaml", "host: db.internal\npassword: hunter2\napi_key: AKIA-not-for-eyes\nnested:\n  auth_token: tok-123\n"),
];

#[tokio::test]
async fn metrics_count_exactly_the_requests_made() {
    let sidecar = Sidecar::start(FILES).await;
    let admin = sidecar.admin.clone().expect("an admin server");
    let mut client = sidecar.client().await;
    for _ in 0..3 {
        get_json(&mut client, "items").await.expect("get");
    }
    for _ in 0..2 {
        assert_eq!(get_json(&mut client, "nope").await.expect_err("unknown").code(), Code::NotFound);
    }
    assert_eq!(get_json(&mut client, "a//b").await.expect_err("bad").code(), Code::InvalidArgument);
    client
        .batch_get(proto::BatchGetRequest { keys: vec!["items".into(), "loot".into()], ..Default::default() })
        .await
        .expect("batch");
    client.list(proto::ListRequest::default()).await.expect("list");
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    next_event(&mut stream).await;

    let (status, body) = http(&admin, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("Prometheus text");
    let requests = |method: &str, code: &str| {
        metric(&scrape, "veltrix_grpc_requests_total", &[("method", method), ("code", code)])
    };
    assert_eq!(requests("Get", "OK"), 3.0);
    assert_eq!(requests("Get", "NOT_FOUND"), 2.0);
    assert_eq!(requests("Get", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(requests("BatchGet", "OK"), 1.0);
    assert_eq!(requests("List", "OK"), 1.0);
    assert_eq!(requests("Watch", "OK"), 1.0);
    let get_latencies = scrape.samples.iter().find(|sample| {
        sample.metric == "veltrix_grpc_request_duration_seconds" && sample.labels.get("method") == Some("Get")
    });
    match get_latencies.map(|sample| &sample.value) {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            let total = buckets.iter().map(|bucket| bucket.count).fold(0.0, f64::max);
            assert_eq!(total, 6.0, "every Get is in the histogram");
        }
        other => panic!("no Get latency histogram: {other:?}"),
    }
    assert_eq!(metric(&scrape, "veltrix_watch_streams", &[]), 1.0);
    assert_eq!(metric(&scrape, "veltrix_modules_served", &[]), 3.0);
    assert_eq!(metric(&scrape, "veltrix_modules_rejected", &[]), 0.0);
    assert_eq!(metric(&scrape, "veltrix_snapshot_revision", &[]), 1.0);
    assert_eq!(metric(&scrape, "veltrix_upstream_connected", &[]), 1.0);
    assert!(metric(&scrape, "veltrix_process_resident_memory_bytes", &[]) > 1e6);

    // A value for request labels is resolved once, then served from the context cache.
    for _ in 0..3 {
        let request = proto::GetRequest {
            key: "loot".into(),
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            ..Default::default()
        };
        client.get(request).await.expect("get with labels");
    }
    let (_, body) = http(&admin, "GET", "/metrics", "").await;
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("Prometheus text");
    assert_eq!(metric(&scrape, "veltrix_context_cache_misses_total", &[]), 1.0);
    assert_eq!(metric(&scrape, "veltrix_context_cache_hits_total", &[]), 2.0);

    if available("promtool", "promtool") {
        let dir = tempfile::tempdir().expect("temp dir");
        let scraped = dir.path().join("metrics.txt");
        std::fs::write(&scraped, &body).expect("write");
        let checked = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", scraped.display()))
            .output()
            .expect("promtool");
        assert!(
            checked.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn probes_and_debug_views() {
    let sidecar = Sidecar::start(FILES).await;
    let admin = sidecar.admin.clone().expect("an admin server");
    assert_eq!(http(&admin, "GET", "/healthz", "").await, (200, "ok\n".to_owned()));
    assert_eq!(http(&admin, "GET", "/readyz", "").await, (200, "ready\n".to_owned()));
    assert_eq!(http(&admin, "POST", "/metrics", "").await.0, 405);
    assert_eq!(http(&admin, "GET", "/nope", "").await.0, 404);

    let (status, config) = http(&admin, "GET", "/debug/config", "").await;
    assert_eq!(status, 200);
    for secret in ["hunter2", "AKIA-not-for-eyes", "tok-123"] {
        assert!(!config.contains(secret), "{secret} leaked: {config}");
    }
    let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(config["modules"]["db"]["password"], "<redacted>");
    assert_eq!(config["modules"]["db"]["host"], "db.internal");
    assert_eq!(config["modules"]["loot"]["dmg"], 40);

    let (status, graph) = http(&admin, "GET", "/debug/graph", "").await;
    assert_eq!(status, 200);
    assert!(graph.contains(r#""loot" -> "items" [label="reference"];"#), "{graph}");
    sidecar.stop().await;
}

#[tokio::test]
async fn readiness_waits_for_configuration() {
    // With a state directory, a missing config directory is an outage to wait out.
    let dirs = ServeDirs::new();
    let serve = Serve::start(dirs.args(&["--rescan-interval", "100ms"]));
    let line = serve.log_line(&["serving the admin endpoints"]);
    let admin =
        line.split("\"addr\":\"").nth(1).and_then(|rest| rest.split('"').next()).expect("the admin address").to_owned();
    assert_eq!(http(&admin, "GET", "/readyz", "").await.0, 503);
    assert_eq!(http(&admin, "GET", "/healthz", "").await.0, 200, "alive while not ready");
    std::fs::create_dir(&dirs.config).expect("mkdir");
    write(&dirs.config, "a.json", "{}");
    within("readiness", async {
        while http(&admin, "GET", "/readyz", "").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // The log level, changed at run time: requests now log with their span.
    assert_eq!(http(&admin, "GET", "/debug/log-level", "").await, (200, "info\n".to_owned()));
    assert_eq!(http(&admin, "PUT", "/debug/log-level", "no such=level=").await.0, 400);
    assert_eq!(http(&admin, "PUT", "/debug/log-level", "debug").await, (200, "debug\n".to_owned()));
    let mut client = connect_when_up(&dirs.addr()).await;
    get_json(&mut client, "a").await.expect("get");
    let answered = serve.log_line(&["\"answered\"", "\"method\":\"Get\""]);
    assert!(answered.contains("\"id\":"), "a request id in the span: {answered}");
}

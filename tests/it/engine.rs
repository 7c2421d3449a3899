//! The engine's client: typed reads, readiness, and LiveConfig read on the game thread.

use std::time::{Duration, Instant};

use serde::Deserialize;
use veltrix_sidecar::client::{Client, LiveConfig};

use crate::{admin::http, support::*};

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Tick {
    rate: u32,
    max_players: u32,
}

const TICK: &str = "rate: 30\nmax_players: 64\n";

#[tokio::test]
async fn typed_get_and_wait_ready() {
    let sidecar = Sidecar::start(&[("server/tick.yaml", TICK)]).await;
    let client = Client::connect(&format!("unix:{}", sidecar.socket.display())).await.expect("client");
    client.wait_ready(DEADLINE).await.expect("ready");
    assert_eq!(client.get::<Tick>("server/tick").await.expect("get"), Tick { rate: 30, max_players: 64 });
    let wrong = client.get::<Vec<u32>>("server/tick").await.expect_err("not a list");
    assert!(wrong.to_string().contains("server/tick does not have the expected shape"), "{wrong}");

    let nobody = Client::connect("unix:/nonexistent/sidecar.sock").await.expect("a lazy client");
    let error = nobody.wait_ready(Duration::from_millis(200)).await.expect_err("nobody there");
    assert!(error.to_string().contains("was not serving within 200ms"), "{error}");
    sidecar.stop().await;
}

#[tokio::test]
async fn live_config_follows_edits_and_keeps_the_last_good_shape() {
    let sidecar = Sidecar::start(&[("server/tick.yaml", TICK)]).await;
    let client = Client::connect(&sidecar.addr).await.expect("client");
    let mut live: LiveConfig<Tick> = LiveConfig::subscribe(&client, "server/tick", DEADLINE).await.expect("subscribe");
    assert_eq!(*live.load(), Tick { rate: 30, max_players: 64 });

    let edited = Instant::now();
    sidecar.write("server/tick.yaml", "rate: 60\nmax_players: 64\n");
    within("the edit", live.changed()).await;
    assert!(edited.elapsed() < Duration::from_secs(1), "seen after {:?}", edited.elapsed());
    assert_eq!(live.load().rate, 60);

    // Valid config of the wrong shape for this engine: the previous value stays.
    let revision = live.revision();
    sidecar.write("server/tick.yaml", "rate: fast\nmax_players: 64\n");
    within("the report", async {
        while live.last_error().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(live.load().rate, 60);
    assert_eq!(live.revision(), revision);
    assert!(live.last_error().unwrap_or_default().contains("does not have the expected shape"));

    // Reading on the game thread costs no call: the sidecar's request count stands still.
    let admin = sidecar.admin.clone().expect("admin");
    let before = http(&admin, "GET", "/metrics", "").await.1;
    let requests = |scrape: &str| -> f64 {
        scrape
            .lines()
            .filter(|line| line.starts_with("veltrix_grpc_requests_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut total = 0u64;
    for _ in 0..1_000_000 {
        total += u64::from(live.load().max_players);
    }
    assert_eq!(total, 64_000_000);
    let after = http(&admin, "GET", "/metrics", "").await.1;
    assert_eq!(requests(&before), requests(&after));
    sidecar.stop().await;
}

#[tokio::test]
async fn live_config_resumes_after_a_sidecar_restart_without_missing_a_change() {
    let dirs = ServeDirs::new();
    write(&dirs.config, "server/tick.yaml", TICK);
    let mut first = Serve::start(dirs.args(&[]));
    let client = Client::connect(&dirs.addr()).await.expect("client");
    let mut live: LiveConfig<Tick> = LiveConfig::subscribe(&client, "server/tick", DEADLINE).await.expect("subscribe");
    assert_eq!(live.load().rate, 30);

    first.kill();
    write(&dirs.config, "server/tick.yaml", "rate: 20\nmax_players: 64\n");
    let _second = Serve::start(dirs.args(&[]));
    within("the change made while the sidecar was down", live.changed()).await;
    assert_eq!(*live.load(), Tick { rate: 20, max_players: 64 });
}

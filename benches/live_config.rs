//! What a game thread pays to read its configuration, each way it could:
//!
//! - `LiveConfig::load()` (an atomic load of an `Arc`), the subject;
//! - cloning an `Arc` the thread already holds: the floor, no synchronisation at all;
//! - reading through an `RwLock<Arc<T>>`, the usual home-grown cache;
//! - a Get to the sidecar over loopback gRPC, what LiveConfig replaces.
//!
//! `cargo bench --bench live_config`

use std::{
    hint::black_box,
    sync::{Arc, RwLock},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use veltrix_sidecar::{
    api::ApiLimits,
    app::{self, Listeners, Shared},
    client::{Client, LiveConfig},
    model::Key,
    resolve::Labels,
    store::{Store, StoreLimits},
    sync::Upstream,
};

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Tick {
    rate: u32,
    max_players: u32,
    regions: Vec<String>,
}

fn reads(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let drain = CancellationToken::new();
    let (client, live) = runtime.block_on(async {
        let (store, mut publisher) = Store::new(StoreLimits { history: 16, watch_backlog: 16 });
        let value = json!({"rate": 30, "max_players": 64, "regions": ["eu-west", "eu-central", "us-east"]});
        let key = Key::new("server/tick").expect("valid key");
        publisher.apply([(key, Some(Arc::new(value)))].into(), None);
        let shared = Shared::new(store, Arc::new(Upstream::new("bench", "bench://".into())), Labels::new(), 1 << 20);
        let limits = ApiLimits { max_keys_per_request: 100, progress_interval: Duration::from_secs(10) };
        let (router, _health) = app::local_api(&shared, limits, drain.clone()).await.expect("services");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr").to_string();
        // Detached: the servers live until the process ends.
        std::mem::forget(app::serve(router, Listeners { tcp: Some(tcp), tls: None, unix: None, admin: None }, &drain));
        let client = Client::connect(&addr).await.expect("client");
        let live: LiveConfig<Tick> =
            LiveConfig::subscribe(&client, "server/tick", Duration::from_secs(5)).await.expect("subscribe");
        (client, live)
    });

    let held = live.load();
    let locked = RwLock::new(live.load());
    let mut group = c.benchmark_group("read the config");
    group.bench_function("Arc::clone (floor)", |b| b.iter(|| black_box(Arc::clone(black_box(&held)))));
    group.bench_function("LiveConfig::load", |b| b.iter(|| black_box(live.load())));
    group.bench_function("RwLock<Arc>::read + clone", |b| {
        b.iter(|| black_box(locked.read().map(|value| Arc::clone(&value)).unwrap_or_else(|_| held.clone())))
    });
    group.bench_function("Get over loopback gRPC", |b| {
        b.iter(|| runtime.block_on(async { black_box(client.get::<Tick>("server/tick").await.expect("get")) }))
    });
    group.finish();
    drain.cancel();
}

criterion_group!(benches, reads);
criterion_main!(benches);

//! `veltrix-sidecar bench resolve`: figures for the configuration layer, measured in
//! one run so that they can be compared with each other on a noisy machine.
//!
//! 1. Full resolution of a generated configuration: N modules in a random DAG of
//!    references and extends, with a bounded depth.
//! 2. One change to a module with a given number of dependents, resolved incrementally.
//! 3. Get latency over loopback gRPC: idle, with the other core spinning (the baseline),
//!    and while changes are being resolved and published back to back. Resolution
//!    happens off the request path, so the last two should match.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{ApiLimits, proto},
    app::{self, Listeners},
    client,
    model::Key,
    resolve::{Labels, ModuleName, Resolver},
    source::Update,
    store::{Store, StoreLimits},
    sync::{Pipeline, Upstream},
};

#[derive(Debug, Clone, clap::Args)]
pub struct ResolveBench {
    /// Modules in the generated configuration.
    #[arg(long, default_value_t = 10_000)]
    pub modules: usize,
    /// Average dependencies per module (references and extends).
    #[arg(long, default_value_t = 3)]
    pub deps: usize,
    /// Longest chain of dependencies.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Dependents of the module changed in the incremental measurement.
    #[arg(long, default_value_t = 10)]
    pub dependents: usize,
    /// Seconds of Get load in each latency phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}

/// A small deterministic generator, so that every run measures the same configuration.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Module `k{i}` of `n` sits at level `i * depth / n`; it depends on 1..=2*deps-1 modules
/// of lower levels, by reference mostly and by `$extends` one time in five.
pub(super) fn generate(n: usize, deps: usize, depth: usize, rng: &mut Rng, variant: u64) -> Vec<(String, Value)> {
    let depth = depth.max(1);
    let level_start = |level: usize| level * n / depth;
    (0..n)
        .map(|i| {
            let level = i * depth / n;
            let mut value = json!({
                "n": i,
                "variant": variant,
                "tuning": {"weight": i % 7, "enabled": i % 2 == 0, "label": format!("module {i}")},
            });
            if level > 0 {
                let object = value.as_object_mut().expect("an object");
                let k = 1 + rng.below(2 * deps.max(1) - 1);
                let mut extends = Vec::new();
                for r in 0..k {
                    let dep = rng.below(level_start(level));
                    if rng.below(5) == 0 {
                        extends.push(format!("k{dep}"));
                    } else {
                        object.insert(format!("r{r}"), json!(format!("${{k{dep}#/n}}")));
                    }
                }
                if !extends.is_empty() {
                    object.insert("$extends".into(), json!(extends));
                }
            }
            (format!("k{i}"), value)
        })
        .collect()
}

fn name(key: &str) -> ModuleName {
    ModuleName::base(Key::new(key).expect("generated keys are valid"))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

pub async fn resolve(bench: &ResolveBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        bench.modules >= bench.depth && bench.depth > 0,
        "--modules must be at least --depth, which must be > 0"
    );
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let modules = generate(bench.modules, bench.deps, bench.depth, &mut rng, 0);
    let documents: Vec<(ModuleName, Option<Arc<Value>>)> =
        modules.iter().map(|(key, value)| (name(key), Some(Arc::new(value.clone())))).collect();
    println!(
        "configuration: {} modules, about {} dependencies each, depth {}, {} dependents for the incremental change",
        bench.modules, bench.deps, bench.depth, bench.dependents
    );

    // 1. Full resolution.
    let mut full = Vec::new();
    let mut rejected = 0;
    for _ in 0..5 {
        let mut resolver = Resolver::new(Labels::new());
        let started = Instant::now();
        let outcomes = resolver.apply(documents.clone());
        full.push(started.elapsed());
        rejected = outcomes.values().filter(|outcome| matches!(outcome, Some(Err(_)))).count();
    }
    let full_median = median(&mut full);
    println!(
        "full resolution:        median {:>10.1} ms over 5 runs ({:.0} modules/s, {rejected} rejected)",
        full_median.as_secs_f64() * 1e3,
        bench.modules as f64 / full_median.as_secs_f64()
    );

    // 2. One change to a module with `dependents` dependents, on top of the whole configuration.
    let mut resolver = Resolver::new(Labels::new());
    resolver.apply(documents.clone());
    resolver.apply((0..bench.dependents).map(|d| {
        (
            name(&format!("hot/dependent{d}")),
            Some(Arc::new(json!({"$extends": ["hot/base"], "d": d, "n": "${hot/base#/n}"}))),
        )
    }));
    let mut incremental = Vec::new();
    let mut resolved_again = 0;
    for round in 0..200u64 {
        let change = [(name("hot/base"), Some(Arc::new(json!({"n": round, "shared": {"round": round}}))))];
        let started = Instant::now();
        resolved_again = resolver.apply(change).len();
        incremental.push(started.elapsed());
    }
    let incremental_median = median(&mut incremental);
    println!(
        "one change:             median {:>10.1} µs over 200 changes ({resolved_again} modules resolved again; {:.0}x faster than full)",
        micros(incremental_median),
        full_median.as_secs_f64() / incremental_median.as_secs_f64().max(1e-9)
    );

    // 3. Get latency, idle and while changes are resolved and published back to back.
    get_latency(bench, &modules).await
}

async fn get_latency(bench: &ResolveBench, modules: &[(String, Value)]) -> anyhow::Result<()> {
    let (store, publisher) = Store::new(StoreLimits { history: 1000, watch_backlog: 256 });
    let drain = CancellationToken::new();
    let upstream = Arc::new(Upstream::new("bench", "bench://".into()));
    let limits = ApiLimits { max_keys_per_request: 1000, progress_interval: Duration::from_secs(10) };
    let shared = app::Shared::new(store.clone(), upstream, Labels::new(), 1 << 20);
    let (router, _health) = app::local_api(&shared, limits, drain.clone()).await?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?.to_string();
    let _servers = app::serve(router, Listeners { tcp: Some(tcp), tls: None, unix: None, admin: None }, &drain);

    let text = |value: &Value| Ok::<_, std::convert::Infallible>(Bytes::from(value.to_string()));
    let initial = Update {
        full: true,
        upstream_revision: None,
        epoch: None,
        changes: modules
            .iter()
            .map(|(key, value)| (format!("{key}.json"), Some(text(value).map_err(|e| e.to_string()))))
            .collect(),
    };
    let mut pipeline = Pipeline::new(Labels::new());
    let mut publisher = publisher;
    let outcome = pipeline.apply(initial, &|_| false);
    publisher.apply(outcome.changes, outcome.modules);

    let mut client = client::connect(&addr).await.context("connect to the benchmark server")?;
    let keys: Vec<String> = modules.iter().map(|(key, _)| key.clone()).collect();
    let phase = Duration::from_secs(bench.seconds);

    let idle = measure_gets(&mut client, &keys, phase).await?;

    // The same load on the other core without resolution, so that what the resolving
    // phase shows is resolution and not merely a busy machine (an idle core's wake-ups
    // are slower than a busy one's).
    let stop = Arc::new(AtomicBool::new(false));
    let spin = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut rng = Rng(1);
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(rng.next());
            }
        })
    };
    let spinning = measure_gets(&mut client, &keys, phase).await?;
    stop.store(true, Ordering::Relaxed);
    spin.await.context("the spin loop")?;

    stop.store(false, Ordering::Relaxed);
    let published = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, published) = (stop.clone(), published.clone());
        let modules = modules.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut rng = Rng(0xc0ff_ee00_1234_5678);
            let mut round = 1u64;
            while !stop.load(Ordering::Relaxed) {
                // A module of the lowest level: its change reaches its dependents too.
                let (key, value) = &modules[rng.below(modules.len() / 10)];
                let mut value = value.clone();
                value["variant"] = json!(round);
                round += 1;
                let update = Update {
                    full: false,
                    upstream_revision: None,
                    epoch: None,
                    changes: [(format!("{key}.json"), Some(Ok(Bytes::from(value.to_string()))))].into(),
                };
                let snapshot = publisher.store().snapshot();
                let outcome = pipeline.apply(update, &|key| snapshot.get(key.as_str()).is_some());
                drop(snapshot);
                publisher.apply(outcome.changes, outcome.modules);
                published.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let busy_started = Instant::now();
    let busy = measure_gets(&mut client, &keys, phase).await?;
    stop.store(true, Ordering::Relaxed);
    churn.await.context("the change loop")?;
    let change_rate = published.load(Ordering::Relaxed) as f64 / busy_started.elapsed().as_secs_f64();
    drain.cancel();

    println!("Get over loopback gRPC, one connection, {} s per phase:", bench.seconds);
    println!("  phase                 requests     p50 µs     p90 µs     p99 µs     max µs");
    for (label, samples) in [("idle", &idle), ("other core spinning", &spinning), ("resolving changes", &busy)] {
        println!(
            "  {label:<18} {:>11} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            samples.len(),
            micros(percentile(samples, 0.50)),
            micros(percentile(samples, 0.90)),
            micros(percentile(samples, 0.99)),
            micros(percentile(samples, 1.0)),
        );
    }
    println!(
        "  resolving {:.0} change-sets/s (store at revision {}); resolving / spinning: p50 {:.2}, p99 {:.2}",
        change_rate,
        store.snapshot().revision,
        percentile(&busy, 0.5).as_secs_f64() / percentile(&spinning, 0.5).as_secs_f64().max(1e-9),
        percentile(&busy, 0.99).as_secs_f64() / percentile(&spinning, 0.99).as_secs_f64().max(1e-9),
    );
    Ok(())
}

/// Sequential Gets of pseudo-random keys for `phase`; the latencies, sorted.
async fn measure_gets(
    client: &mut proto::config_service_client::ConfigServiceClient<tonic::transport::Channel>,
    keys: &[String],
    phase: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut rng = Rng(0x1234_5678_9abc_def0);
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < phase {
        let key = &keys[rng.below(keys.len())];
        let sent = Instant::now();
        client.get(proto::GetRequest { key: key.clone(), ..Default::default() }).await.context("get")?;
        samples.push(sent.elapsed());
    }
    samples.sort();
    Ok(samples)
}

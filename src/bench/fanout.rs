//! `bench fanout`: one key in etcd, watched by many streams, first straight from etcd,
//! then through a relay that follows that etcd; for each, the time from a put to its
//! receipt by every stream, and the server's memory per stream. The two are measured
//! one after the other in the same run, with the same streams, connections and puts.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::{
    config::duration,
    metrics::resident_bytes,
    relay::proto::{WatchRequest as RelayWatchRequest, relay_service_client::RelayServiceClient},
    source::etcd::api::etcdserverpb::{
        PutRequest, WatchCreateRequest, WatchRequest as EtcdWatchRequest, kv_client::KvClient,
        watch_client::WatchClient, watch_request::RequestUnion,
    },
};

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutBench {
    /// An etcd endpoint, HOST:PORT.
    #[arg(long)]
    pub etcd: String,
    /// A relay (HOST:PORT, plain gRPC) following `--prefix` of that etcd.
    #[arg(long)]
    pub relay: String,
    /// The etcd key prefix the relay follows; the bench writes `PREFIX` + `fanout.json`.
    #[arg(long, default_value = "/veltrix/bench/")]
    pub prefix: String,
    /// Watch streams to open on each server.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Puts to time.
    #[arg(long, default_value_t = 20)]
    pub puts: usize,
    /// Time between puts.
    #[arg(long, default_value = "500ms")]
    pub interval: String,
    /// etcd's process, to read its memory.
    #[arg(long)]
    pub etcd_pid: Option<u32>,
    /// The relay's process, to read its memory.
    #[arg(long)]
    pub relay_pid: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

const DOCUMENT: &str = "fanout.json";

#[derive(Debug, Clone, Copy)]
enum Target {
    Etcd,
    Relay,
}

struct Outcome {
    latencies: Histogram<u64>,
    received: usize,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    open_time: Duration,
}

/// What every stream shares: when each put was sent, and the latencies seen.
struct Shared {
    started: Instant,
    sent_at: Vec<std::sync::atomic::AtomicU64>,
    latencies: Mutex<Histogram<u64>>,
    received: AtomicUsize,
    ready: AtomicUsize,
}

impl Shared {
    /// A value received: its sequence number is in the document.
    fn receive(&self, value: &[u8]) {
        let Some(seq) = serde_json::from_slice::<serde_json::Value>(value)
            .ok()
            .and_then(|value| value["seq"].as_u64())
            .and_then(|seq| usize::try_from(seq).ok())
        else {
            return;
        };
        let Some(sent) = self.sent_at.get(seq).map(|sent| sent.load(Ordering::Acquire)) else { return };
        if sent == 0 {
            return;
        }
        let now = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut latencies) = self.latencies.lock() {
            let _ = latencies.record(now.saturating_sub(sent).max(1));
        }
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn fanout(bench: &FanoutBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        bench.streams > 0 && bench.connections > 0 && bench.puts > 0,
        "streams, connections and puts must be above 0"
    );
    let interval = duration("interval", &bench.interval)?;
    let key = format!("{}{DOCUMENT}", bench.prefix);
    let mut kv = KvClient::new(connect(&bench.etcd).await?);
    // The key exists before anyone watches, so a relay's snapshot has it.
    put(&mut kv, &key, json!({ "warmup": true })).await?;

    let mut outcomes = Vec::new();
    for (target, pid) in [(Target::Etcd, bench.etcd_pid), (Target::Relay, bench.relay_pid)] {
        if !bench.json {
            eprintln!("{target:?}: opening {} streams over {} connections", bench.streams, bench.connections);
        }
        outcomes.push(run(bench, target, pid, &mut kv, &key, interval).await?);
    }
    report(bench, &outcomes[0], &outcomes[1]);
    Ok(())
}

async fn run(
    bench: &FanoutBench,
    target: Target,
    pid: Option<u32>,
    kv: &mut KvClient<Channel>,
    key: &str,
    interval: Duration,
) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared {
        started: Instant::now(),
        sent_at: (0..bench.puts).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
        latencies: Mutex::new(super::load::histogram()?),
        received: AtomicUsize::new(0),
        ready: AtomicUsize::new(0),
    });
    let rss_before = pid.and_then(|pid| resident_bytes(&pid.to_string()));
    let addr = match target {
        Target::Etcd => &bench.etcd,
        Target::Relay => &bench.relay,
    };
    let mut channels = Vec::with_capacity(bench.connections);
    for _ in 0..bench.connections {
        channels.push(connect(addr).await?);
    }
    let opening = Instant::now();
    let mut streams = JoinSet::new();
    for n in 0..bench.streams {
        let (channel, shared) = (channels[n % channels.len()].clone(), shared.clone());
        match target {
            Target::Etcd => streams.spawn(watch_etcd(channel, key.to_owned(), shared)),
            Target::Relay => streams.spawn(watch_relay(channel, shared)),
        };
    }
    let all_open = wait_until(Duration::from_secs(120), || shared.ready.load(Ordering::Relaxed) >= bench.streams).await;
    anyhow::ensure!(
        all_open,
        "{target:?}: only {} of {} streams opened in 120 s",
        shared.ready.load(Ordering::Relaxed),
        bench.streams
    );
    let open_time = opening.elapsed();
    // Let the server settle before its memory is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = pid.and_then(|pid| resident_bytes(&pid.to_string()));

    for seq in 0..bench.puts {
        let sent = u64::try_from(shared.started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        shared.sent_at[seq].store(sent, Ordering::Release);
        put(kv, key, json!({ "seq": seq })).await?;
        tokio::time::sleep(interval).await;
    }
    let expected = bench.streams * bench.puts;
    wait_until(Duration::from_secs(60), || shared.received.load(Ordering::Relaxed) >= expected).await;
    streams.abort_all();
    while streams.join_next().await.is_some() {}
    let latencies = shared
        .latencies
        .lock()
        .map(|latencies| latencies.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    Ok(Outcome { latencies, received: shared.received.load(Ordering::Relaxed), rss_before, rss_after, open_time })
}

async fn watch_etcd(channel: Channel, key: String, shared: Arc<Shared>) {
    let create = EtcdWatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into_bytes(),
            ..Default::default()
        })),
    };
    // The request stream stays open: closing it would cancel the watch.
    let requests = tokio_stream::StreamExt::chain(tokio_stream::once(create), tokio_stream::pending());
    let Ok(response) = WatchClient::new(channel).watch(requests).await else { return };
    let mut responses = response.into_inner();
    while let Ok(Some(response)) = responses.message().await {
        if response.created {
            shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        for event in &response.events {
            if let Some(kv) = &event.kv {
                shared.receive(&kv.value);
            }
        }
    }
}

async fn watch_relay(channel: Channel, shared: Arc<Shared>) {
    let request = RelayWatchRequest { prefix: DOCUMENT.to_owned(), start_revision: 0, epoch: String::new() };
    let Ok(response) = RelayServiceClient::new(channel).watch(request).await else { return };
    let mut responses = response.into_inner();
    let mut first = true;
    while let Ok(Some(reply)) = responses.message().await {
        if first {
            shared.ready.fetch_add(1, Ordering::Relaxed);
            first = false;
            continue;
        }
        for document in &reply.documents {
            if let Some(crate::relay::proto::document::State::Content(content)) = &document.state {
                shared.receive(content);
            }
        }
    }
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: serde_json::Value) -> anyhow::Result<()> {
    kv.put(PutRequest { key: key.as_bytes().to_vec(), value: value.to_string().into_bytes(), ..Default::default() })
        .await
        .context("put in etcd")?;
    Ok(())
}

async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn report(bench: &FanoutBench, etcd: &Outcome, relay: &Outcome) {
    let ms = |latencies: &Histogram<u64>, quantile: f64| latencies.value_at_quantile(quantile) as f64 / 1000.0;
    let per_stream = |outcome: &Outcome| match (outcome.rss_before, outcome.rss_after) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) as f64 / bench.streams as f64),
        _ => None,
    };
    let expected = bench.streams * bench.puts;
    let row = |outcome: &Outcome| {
        json!({
            "received": outcome.received,
            "expected": expected,
            "open_seconds": outcome.open_time.as_secs_f64(),
            "p50_ms": ms(&outcome.latencies, 0.5),
            "p99_ms": ms(&outcome.latencies, 0.99),
            "max_ms": outcome.latencies.max() as f64 / 1000.0,
            "rss_before_bytes": outcome.rss_before,
            "rss_after_bytes": outcome.rss_after,
            "rss_bytes_per_stream": per_stream(outcome),
        })
    };
    let ratio = |quantile: f64| ms(&relay.latencies, quantile) / ms(&etcd.latencies, quantile).max(f64::MIN_POSITIVE);
    if bench.json {
        let report = json!({
            "streams": bench.streams,
            "connections": bench.connections,
            "puts": bench.puts,
            "etcd": row(etcd),
            "relay": row(relay),
            "relay_over_etcd_p50": ratio(0.5),
            "relay_over_etcd_p99": ratio(0.99),
        });
        println!("{report}");
        return;
    }
    println!(
        "{} watch streams over {} connections, {} puts {} apart; put-to-receipt by every stream",
        bench.streams, bench.connections, bench.puts, bench.interval
    );
    println!("server  received         opened in  p50 ms   p99 ms   max ms   RSS MiB (before → after)  KiB/stream");
    for (name, outcome) in [("etcd", etcd), ("relay", relay)] {
        let mib = |bytes: Option<u64>| bytes.map_or("?".to_owned(), |bytes| format!("{:.1}", bytes as f64 / 1048576.0));
        println!(
            "{name:<7} {:>8}/{:<8} {:>7.2} s {:>8.1} {:>8.1} {:>8.1}   {:>7} → {:<7}          {}",
            outcome.received,
            expected,
            outcome.open_time.as_secs_f64(),
            ms(&outcome.latencies, 0.5),
            ms(&outcome.latencies, 0.99),
            outcome.latencies.max() as f64 / 1000.0,
            mib(outcome.rss_before),
            mib(outcome.rss_after),
            per_stream(outcome).map_or("?".to_owned(), |bytes| format!("{:.1}", bytes / 1024.0)),
        );
    }
    println!("relay / etcd: p50 {:.3}, p99 {:.3}", ratio(0.5), ratio(0.99));
}

//! `bench load`: Get, BatchGet or Watch load on a running sidecar, over TCP or a unix
//! socket; latency percentiles from an HDR histogram, throughput, and `--json` for
//! machines. Bounded by a duration or a request count, so it always stops by itself.

use std::{
    io::{IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_stream::StreamExt;

use crate::{
    api::proto::{self, watch_response::Kind},
    client,
    config::duration,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rpc {
    Get,
    BatchGet,
    /// Open streams and measure, per change-set, how long after the first stream the
    /// last one received it.
    Watch,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadBench {
    #[arg(long, value_enum, default_value = "get")]
    pub rpc: Rpc,
    /// Keys to ask for (Get: in turn; BatchGet: all in each request; Watch: followed).
    #[arg(long = "key", required = true)]
    pub keys: Vec<String>,
    /// HTTP/2 connections to open.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight at once (Watch: streams), spread over the connections.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to run.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Stop after this many requests (Get, BatchGet) instead of at the end of --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Latencies recorded, from 1 µs to 60 s with 3 significant digits.
pub(super) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

pub async fn load(bench: &LoadBench, addr: &str) -> anyhow::Result<()> {
    anyhow::ensure!(bench.connections > 0 && bench.concurrency > 0, "--connections and --concurrency must be above 0");
    let run_for = duration("duration", &bench.duration)?;
    let mut clients = Vec::with_capacity(bench.connections);
    for _ in 0..bench.connections {
        clients.push(client::connect(addr).await?);
    }
    match bench.rpc {
        Rpc::Get | Rpc::BatchGet => requests(bench, clients, run_for).await,
        Rpc::Watch => watches(bench, clients, run_for).await,
    }
}

async fn requests(
    bench: &LoadBench,
    clients: Vec<proto::config_service_client::ConfigServiceClient<tonic::transport::Channel>>,
    run_for: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + run_for;
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let limit = bench.requests.unwrap_or(u64::MAX);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..bench.concurrency {
        let mut client = clients[worker % clients.len()].clone();
        let (issued, errors, keys, rpc) = (issued.clone(), errors.clone(), bench.keys.clone(), bench.rpc);
        workers.spawn(async move {
            let mut latencies = histogram()?;
            let mut n = worker;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < limit {
                let sent = Instant::now();
                let result = match rpc {
                    Rpc::BatchGet => {
                        let request = proto::BatchGetRequest { keys: keys.clone(), ..Default::default() };
                        client.batch_get(request).await.map(|_| ())
                    }
                    _ => {
                        let request = proto::GetRequest { key: keys[n % keys.len()].clone(), ..Default::default() };
                        client.get(request).await.map(|_| ())
                    }
                };
                n += 1;
                match result {
                    Ok(()) => {
                        latencies.saturating_record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX))
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let progress = Progress::start(bench.json, run_for, bench.requests, issued.clone());
    let mut latencies = histogram()?;
    while let Some(worker) = workers.join_next().await {
        latencies.add(worker.context("a load worker")??).context("merging histograms")?;
    }
    progress.stop();
    let elapsed = started.elapsed();
    report(bench, &latencies, errors.load(Ordering::Relaxed), elapsed);
    Ok(())
}

fn report(bench: &LoadBench, latencies: &Histogram<u64>, errors: u64, elapsed: Duration) {
    let completed = latencies.len();
    let throughput = completed as f64 / elapsed.as_secs_f64();
    let quantile = |q: f64| latencies.value_at_quantile(q);
    if bench.json {
        let report = json!({
            "rpc": format!("{:?}", bench.rpc),
            "connections": bench.connections,
            "concurrency": bench.concurrency,
            "requests": completed,
            "errors": errors,
            "seconds": elapsed.as_secs_f64(),
            "throughput_per_second": throughput,
            "latency_us": {"p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99), "p99_9": quantile(0.999), "max": latencies.max()},
        });
        println!("{report}");
        return;
    }
    println!(
        "{:?}: {completed} requests, {errors} errors in {:.2} s over {} connections, {} in flight: {throughput:.0} requests/s",
        bench.rpc,
        elapsed.as_secs_f64(),
        bench.connections,
        bench.concurrency
    );
    println!(
        "latency µs   p50 {}   p90 {}   p99 {}   p99.9 {}   max {}",
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
        quantile(0.999),
        latencies.max()
    );
}

/// Opens the streams, then measures for each change-set the spread between the first
/// and the last stream to receive it.
async fn watches(
    bench: &LoadBench,
    clients: Vec<proto::config_service_client::ConfigServiceClient<tonic::transport::Channel>>,
    run_for: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut streams = Vec::with_capacity(bench.concurrency);
    for n in 0..bench.concurrency {
        let mut client = clients[n % clients.len()].clone();
        let request = proto::WatchRequest { keys: bench.keys.clone(), ..Default::default() };
        streams.push(client.watch(request).await.context("opening a watch stream")?.into_inner());
    }
    for stream in &mut streams {
        stream.next().await.context("a stream ended before its first message")?.context("watch stream")?;
    }
    let open_time = started.elapsed();
    let stop = Arc::new(AtomicBool::new(false));
    for mut stream in streams {
        let (arrivals_tx, stop) = (arrivals_tx.clone(), stop.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if message.kind() == Kind::Change || message.kind() == Kind::Resync {
                    let _ = arrivals_tx.send((message.revision, Instant::now()));
                }
            }
        });
    }
    drop(arrivals_tx);
    let mut first_seen = std::collections::BTreeMap::<u64, (Instant, Instant, usize)>::new();
    let deadline = tokio::time::Instant::now() + run_for;
    loop {
        let arrival = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            arrival = arrivals.recv() => arrival,
        };
        let Some((revision, at)) = arrival else { break };
        let slot = first_seen.entry(revision).or_insert((at, at, 0));
        slot.1 = slot.1.max(at);
        slot.2 += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut spreads = histogram()?;
    for (first, last, _) in first_seen.values() {
        spreads.saturating_record(u64::try_from((*last - *first).as_micros()).unwrap_or(u64::MAX).max(1));
    }
    let complete = first_seen.values().filter(|(_, _, n)| *n == bench.concurrency).count();
    if bench.json {
        let report = json!({
            "rpc": "Watch",
            "streams": bench.concurrency,
            "connections": bench.connections,
            "open_seconds": open_time.as_secs_f64(),
            "change_sets": first_seen.len(),
            "change_sets_seen_by_every_stream": complete,
            "spread_us": {"p50": spreads.value_at_quantile(0.5), "p99": spreads.value_at_quantile(0.99), "max": spreads.max()},
        });
        println!("{report}");
    } else {
        println!(
            "Watch: {} streams over {} connections opened in {:.2} s; {} change-sets, {complete} seen by every stream",
            bench.concurrency,
            bench.connections,
            open_time.as_secs_f64(),
            first_seen.len()
        );
        println!(
            "first-to-last receipt µs   p50 {}   p99 {}   max {}",
            spreads.value_at_quantile(0.5),
            spreads.value_at_quantile(0.99),
            spreads.max()
        );
    }
    Ok(())
}

/// A progress line on stderr, redrawn a few times a second when stderr is a terminal.
struct Progress {
    stop: Option<Arc<AtomicBool>>,
}

impl Progress {
    fn start(quiet: bool, run_for: Duration, requests: Option<u64>, issued: Arc<AtomicU64>) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress { stop: None };
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                let done = issued.load(Ordering::Relaxed);
                let fraction = match requests {
                    Some(total) => done as f64 / total.max(1) as f64,
                    None => started.elapsed().as_secs_f64() / run_for.as_secs_f64(),
                }
                .min(1.0);
                let bar = "#".repeat((fraction * 30.0) as usize);
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r[{bar:<30}] {:>3.0}%  {done} requests  {rate:.0}/s ", fraction * 100.0);
                    let _ = err.flush();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = writeln!(std::io::stderr());
        });
        Progress { stop: Some(stop) }
    }

    fn stop(self) {
        if let Some(stop) = self.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

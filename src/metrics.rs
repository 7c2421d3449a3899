//! Counters and histograms of the local API and the sync loop, and the Prometheus text
//! rendering of them together with gauges read from the store, the upstream state and the
//! caches at scrape time.
//!
//! Counting on the request path is a few relaxed atomic adds: no lock, no allocation.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

/// The RPCs of `veltrix.config.v1.ConfigService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    BatchGet,
    List,
    Watch,
    Status,
    Explain,
}

impl Method {
    const ALL: [Method; 6] =
        [Method::Get, Method::BatchGet, Method::List, Method::Watch, Method::Status, Method::Explain];

    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "Get",
            Method::BatchGet => "BatchGet",
            Method::List => "List",
            Method::Watch => "Watch",
            Method::Status => "Status",
            Method::Explain => "Explain",
        }
    }
}

/// gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED).
const N_CODES: usize = 17;
const CODE_NAMES: [&str; N_CODES] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Upper bounds of the latency buckets, in seconds: from 25 µs (a Get from memory) to 1 s.
const BUCKETS: [f64; 12] =
    [0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1, 0.5, 1.0];

#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot counts what is above every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; N_CODES]; Method::ALL.len()],
    latency: [Histogram; Method::ALL.len()],
    /// Values resolved under request labels found in the context cache, and not.
    pub context_cache_hits: AtomicU64,
    pub context_cache_misses: AtomicU64,
    /// Last-known-good states written, and attempts that failed.
    pub last_known_good_writes: AtomicU64,
    pub last_known_good_failures: AtomicU64,
    /// Requests refused for a missing or wrong bearer token.
    pub unauthenticated: AtomicU64,
}

impl Metrics {
    /// Counts one finished request (for Watch: its opening).
    pub fn observe(&self, method: Method, code: tonic::Code, elapsed: Duration) {
        let index = method as usize;
        let code = (code as usize).min(N_CODES - 1);
        self.requests[index][code].fetch_add(1, Ordering::Relaxed);
        self.latency[index].observe(elapsed);
    }
}

/// What the process knows at scrape time, beside its own counters.
pub struct Gauges {
    pub revision: u64,
    pub upstream_revision: Option<i64>,
    pub upstream_connected: bool,
    pub last_sync: Option<SystemTime>,
    pub modules_served: usize,
    pub modules_rejected: usize,
    pub watch_streams: usize,
    pub resyncs_sent: u64,
    pub slow_reader_resyncs: u64,
    pub context_cache_entries: u64,
    pub serving_from_last_known_good: bool,
    /// Present in the relay role.
    pub relay: Option<RelayGauges>,
}

/// What a relay serves to sidecars.
pub struct RelayGauges {
    pub revision: i64,
    pub documents: usize,
    pub clients: usize,
    pub long_polls: u64,
    pub resyncs_sent: u64,
}

/// The Prometheus text exposition format (version 0.0.4).
pub fn render(metrics: &Metrics, gauges: &Gauges) -> String {
    let mut out = String::with_capacity(8 * 1024);
    header(
        &mut out,
        "veltrix_grpc_requests_total",
        "counter",
        "Requests of the local API, by method and gRPC status code.",
    );
    for method in Method::ALL {
        for (code, count) in metrics.requests[method as usize].iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "veltrix_grpc_requests_total{{method=\"{}\",code=\"{}\"}} {count}",
                    method.name(),
                    CODE_NAMES[code]
                );
            }
        }
    }
    header(
        &mut out,
        "veltrix_grpc_request_duration_seconds",
        "histogram",
        "Time to answer a request of the local API (for Watch: to open the stream).",
    );
    for method in Method::ALL {
        let histogram = &metrics.latency[method as usize];
        let mut cumulative = 0;
        for (slot, bound) in BUCKETS.iter().enumerate() {
            cumulative += histogram.buckets[slot].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "veltrix_grpc_request_duration_seconds_bucket{{method=\"{}\",le=\"{bound}\"}} {cumulative}",
                method.name()
            );
        }
        cumulative += histogram.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let name = method.name();
        let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ =
            writeln!(out, "veltrix_grpc_request_duration_seconds_bucket{{method=\"{name}\",le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "veltrix_grpc_request_duration_seconds_sum{{method=\"{name}\"}} {sum}");
        let _ = writeln!(out, "veltrix_grpc_request_duration_seconds_count{{method=\"{name}\"}} {cumulative}");
    }

    let counters: [(&str, &str, u64); 7] = [
        ("veltrix_watch_resyncs_total", "RESYNC messages sent to Watch streams, for any reason.", gauges.resyncs_sent),
        (
            "veltrix_watch_slow_reader_resyncs_total",
            "Watch streams that fell behind and were collapsed into a RESYNC.",
            gauges.slow_reader_resyncs,
        ),
        (
            "veltrix_context_cache_hits_total",
            "Values for request labels found in the context cache.",
            metrics.context_cache_hits.load(Ordering::Relaxed),
        ),
        (
            "veltrix_context_cache_misses_total",
            "Values for request labels resolved because the context cache lacked them.",
            metrics.context_cache_misses.load(Ordering::Relaxed),
        ),
        (
            "veltrix_last_known_good_writes_total",
            "Last-known-good states written to the state directory.",
            metrics.last_known_good_writes.load(Ordering::Relaxed),
        ),
        (
            "veltrix_last_known_good_write_failures_total",
            "Last-known-good states that could not be written.",
            metrics.last_known_good_failures.load(Ordering::Relaxed),
        ),
        (
            "veltrix_unauthenticated_requests_total",
            "Requests refused for a missing or wrong bearer token.",
            metrics.unauthenticated.load(Ordering::Relaxed),
        ),
    ];
    write_counters(&mut out, &counters);

    let seconds_since_sync = gauges
        .last_sync
        .and_then(|last| SystemTime::now().duration_since(last).ok())
        .map_or(f64::NAN, |since| since.as_secs_f64());
    let gauges_list: [(&str, &str, f64); 10] = [
        ("veltrix_snapshot_revision", "Revision of the snapshot being served.", gauges.revision as f64),
        (
            "veltrix_upstream_revision",
            "The upstream's own revision last applied (etcd revision, ZooKeeper zxid); NaN without one.",
            gauges.upstream_revision.map_or(f64::NAN, |revision| revision as f64),
        ),
        (
            "veltrix_upstream_connected",
            "1 while the upstream is reachable.",
            f64::from(u8::from(gauges.upstream_connected)),
        ),
        (
            "veltrix_upstream_last_sync_age_seconds",
            "Seconds since the upstream was last read successfully; NaN before the first time.",
            seconds_since_sync,
        ),
        (
            "veltrix_serving_last_known_good",
            "1 while serving a state saved by an earlier run, before the upstream answered.",
            f64::from(u8::from(gauges.serving_from_last_known_good)),
        ),
        ("veltrix_modules_served", "Modules in the served snapshot.", gauges.modules_served as f64),
        (
            "veltrix_modules_rejected",
            "Upstream documents or modules currently rejected.",
            gauges.modules_rejected as f64,
        ),
        ("veltrix_watch_streams", "Watch streams open.", gauges.watch_streams as f64),
        (
            "veltrix_context_cache_entries",
            "Values for request labels held in the context cache.",
            gauges.context_cache_entries as f64,
        ),
        (
            "veltrix_process_resident_memory_bytes",
            "Resident set size of this process.",
            resident_bytes("self").map_or(f64::NAN, |bytes| bytes as f64),
        ),
    ];
    write_gauges(&mut out, &gauges_list);
    if let Some(relay) = &gauges.relay {
        render_relay(&mut out, relay);
    }
    out
}

fn render_relay(out: &mut String, relay: &RelayGauges) {
    write_counters(
        out,
        &[
            ("veltrix_relay_long_polls_total", "HTTP long-polls answered or waiting.", relay.long_polls),
            ("veltrix_relay_resyncs_total", "Whole states sent to clients that could not resume.", relay.resyncs_sent),
        ],
    );
    write_gauges(
        out,
        &[
            ("veltrix_relay_revision", "Revision of the documents the relay serves.", relay.revision as f64),
            ("veltrix_relay_documents", "Documents the relay serves.", relay.documents as f64),
            ("veltrix_relay_clients", "Watch streams and long-polls open on the relay.", relay.clients as f64),
        ],
    );
}

/// Unlabelled counters: (name, help, value).
fn write_counters(out: &mut String, counters: &[(&str, &str, u64)]) {
    for (name, help, value) in counters {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// Unlabelled gauges: (name, help, value).
fn write_gauges(out: &mut String, gauges: &[(&str, &str, f64)]) {
    for (name, help, value) in gauges {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", format_value(*value));
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn format_value(value: f64) -> String {
    if value.is_nan() { "NaN".to_owned() } else { value.to_string() }
}

/// VmRSS of a process (`"self"` or a PID) from /proc, in bytes; `None` where there is none.
pub fn resident_bytes(process: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

//! `bench startup`: how soon a sidecar process answers its first Get, and how much memory
//! it holds once idle, measured on the real binary started as a child process.
//!
//! Three cases, with the configuration of `bench resolve`; each is started once to warm
//! up, `--runs` times on the clock, then once more to read its memory after `--settle`:
//! 1. from the upstream (a directory), with nothing saved: parse and resolve everything;
//! 2. from the last-known-good state, with the upstream directory gone;
//! 3. from the last-known-good state, with the upstream an etcd endpoint that accepts
//!    connections and never answers: the slow upstream a restart must not wait for.
//!
//! The clock starts just before the process is spawned, so exec, loading, settings,
//! binding and restoring are all in the figure; it stops when a Get of the deepest module
//! returns OK.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;

use super::resolve::{Rng, generate};
use crate::{
    api::proto,
    client,
    config::{RawSettings, duration},
    sync::last_known_good::StateFile,
};

#[derive(Debug, Clone, clap::Args)]
pub struct StartupBench {
    /// Modules in the generated configuration (the generator of `bench resolve`).
    #[arg(long, default_value_t = 1000)]
    pub modules: usize,
    /// Starts timed in each case.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// How long a sidecar idles after its first Get before its memory is read.
    #[arg(long, default_value = "3s")]
    pub settle: String,
    /// The sidecar binary to start; by default this one.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Longest wait for a first Get before the run counts as failed.
const FIRST_GET_TIMEOUT: Duration = Duration::from_secs(20);
/// Between attempts at a first Get: short against the figures measured, long enough not
/// to take the starting sidecar's core.
const POLL: Duration = Duration::from_micros(100);

pub async fn startup(bench: &StartupBench) -> anyhow::Result<()> {
    anyhow::ensure!(bench.modules >= 10 && bench.runs > 0, "--modules must be at least 10 and --runs above 0");
    let settle = duration("settle", &bench.settle)?;
    let binary = match &bench.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().context("locating this binary")?,
    };
    let work = WorkDir::create()?;
    let config = work.path.join("config");
    fs::create_dir(&config).context("creating the config directory")?;
    let mut config_bytes = 0;
    for (key, value) in generate(bench.modules, 3, 10, &mut Rng(0x5eed_1234_abcd_ef01), 0) {
        let text = serde_json::to_vec(&value)?;
        config_bytes += text.len();
        fs::write(config.join(format!("{key}.json")), text).context("writing the config")?;
    }
    // The last module sits deepest in the dependency graph.
    let probe = format!("k{}", bench.modules - 1);
    let config_arg = arg(&config);

    let starts = Starts { binary: &binary, work: &work, probe: &probe, runs: bench.runs, settle };

    // 1. Fresh state directories, so that nothing is restored and the upstream is read.
    let state_dir = |start: usize| work.path.join(format!("state-{start}"));
    let upstream = starts
        .case("upstream", |start| {
            vec!["--source".into(), config_arg.clone(), "--state-dir".into(), arg(&state_dir(start))]
        })
        .await?;
    let saved = state_dir(0);

    // 2. The same source, whose directory is gone: an upstream outage at start.
    fs::rename(&config, work.path.join("config-gone")).context("moving the config directory away")?;
    let unavailable = starts
        .case("unavailable", |_| vec!["--source".into(), config_arg.clone(), "--state-dir".into(), arg(&saved)])
        .await?;

    // 3. An etcd member that completes TCP handshakes (the kernel does, into the backlog)
    // and never says a word. The state saved by case 1 is re-addressed to it, since a
    // state is only trusted for the source it was saved from.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").context("binding the silent upstream")?;
    let etcd = format!("etcd://{}/bench", silent.local_addr()?);
    let mut state = StateFile::in_dir(&saved)
        .load(&canonical_source(&config_arg, &saved)?)?
        .context("the first case saved no last-known-good state")?;
    let etcd_state = work.path.join("state-etcd");
    state.source = canonical_source(&etcd, &etcd_state)?;
    StateFile::in_dir(&etcd_state).save(&state)?;
    let silent_upstream = starts
        .case("silent", |_| vec!["--source".into(), etcd.clone(), "--state-dir".into(), arg(&etcd_state)])
        .await?;
    for case in [&unavailable, &silent_upstream] {
        anyhow::ensure!(
            case.revisions.iter().all(|revision| upstream.revisions.contains(revision)),
            "a restart served revisions {:?}, not the saved one",
            case.revisions
        );
    }

    let cases = [
        ("from the upstream (a directory), nothing saved", &upstream),
        ("last-known-good, upstream directory missing", &unavailable),
        ("last-known-good, etcd upstream not answering", &silent_upstream),
    ];
    if bench.json {
        let cases: Vec<_> = cases
            .iter()
            .map(|(name, case)| {
                json!({
                    "case": name,
                    "first_get_ms": {
                        "median": ms(case.median()),
                        "max": ms(case.max()),
                        "each": case.first_get.iter().map(|elapsed| ms(*elapsed)).collect::<Vec<_>>(),
                    },
                    "memory_kib": case.memory.as_ref().map(Memory::to_json),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"modules": bench.modules, "config_bytes": config_bytes, "runs": bench.runs, "settle_seconds": settle.as_secs_f64(), "cases": cases})
        );
        return Ok(());
    }
    println!(
        "{} generated modules ({} KiB of JSON), {} starts per case; first Get of {probe} after the process is spawned:",
        bench.modules,
        config_bytes / 1024,
        bench.runs
    );
    println!("  {:<50} {:>10} {:>10}", "case", "median ms", "max ms");
    for (name, case) in &cases {
        println!("  {name:<50} {:>10.1} {:>10.1}", ms(case.median()), ms(case.max()));
    }
    println!("memory {} s after the first Get, KiB:", settle.as_secs_f64());
    println!("  {:<50} {:>10} {:>10} {:>10} {:>8}", "case", "VmRSS", "anonymous", "file", "threads");
    for (name, case) in &cases {
        match &case.memory {
            Some(memory) => println!(
                "  {name:<50} {:>10} {:>10} {:>10} {:>8}",
                memory.rss_kib, memory.anon_kib, memory.file_kib, memory.threads
            ),
            None => println!("  {name:<50} {:>10}", "n/a"),
        }
    }
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The source as the sidecar names it in its state file, from the settings code itself.
fn canonical_source(source: &str, state_dir: &Path) -> anyhow::Result<String> {
    let raw = RawSettings {
        source: Some(source.to_owned()),
        state_dir: Some(state_dir.to_owned()),
        listen: Some("127.0.0.1:0".to_owned()),
        socket: Some("none".to_owned()),
        ..RawSettings::default()
    };
    Ok(raw.validate().context("settings of the benchmark")?.source.to_string())
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// How every case is started.
struct Starts<'a> {
    binary: &'a Path,
    work: &'a WorkDir,
    probe: &'a str,
    runs: usize,
    settle: Duration,
}

impl Starts<'_> {
    /// One start to warm up, `runs` timed starts, then one start whose memory is read after
    /// `settle`. Idling before a start makes it slower on this kind of machine (a sleeping
    /// core wakes up slowly), so no timed start follows the idle wait.
    async fn case(&self, name: &str, args: impl Fn(usize) -> Vec<String>) -> anyhow::Result<Case> {
        let mut case = Case::default();
        for start in 0..self.runs + 2 {
            let mut sidecar = Sidecar::start(self.binary, self.work, &format!("{name}-{start}"), &args(start))?;
            let (elapsed, revision) = sidecar.first_get(self.probe).await?;
            case.revisions.push(revision);
            if start == self.runs + 1 {
                tokio::time::sleep(self.settle).await;
                case.memory = Memory::of(sidecar.child.id());
            } else if start > 0 {
                case.first_get.push(elapsed);
            }
        }
        Ok(case)
    }
}

/// The starts of one case.
#[derive(Default)]
struct Case {
    first_get: Vec<Duration>,
    revisions: Vec<u64>,
    memory: Option<Memory>,
}

impl Case {
    fn median(&self) -> Duration {
        let mut sorted = self.first_get.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }

    fn max(&self) -> Duration {
        self.first_get.iter().max().copied().unwrap_or_default()
    }
}

/// A sidecar process, killed when dropped.
struct Sidecar {
    child: Child,
    started: Instant,
    socket: PathBuf,
    log: PathBuf,
}

impl Sidecar {
    fn start(binary: &Path, work: &WorkDir, name: &str, args: &[String]) -> anyhow::Result<Sidecar> {
        let socket = work.path.join(format!("{name}.sock"));
        let log = work.path.join(format!("{name}.log"));
        let stderr = fs::File::create(&log).context("creating the sidecar's log")?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(args)
            .args(["--listen", "none", "--admin-listen", "none", "--log-level", "warn", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let started = Instant::now();
        let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        Ok(Sidecar { child, started, socket, log })
    }

    /// Time from the spawn to the first OK Get of `key`, and the revision it returned.
    async fn first_get(&mut self, key: &str) -> anyhow::Result<(Duration, u64)> {
        let addr = format!("unix:{}", self.socket.display());
        let mut api = None;
        loop {
            if self.started.elapsed() > FIRST_GET_TIMEOUT {
                bail!("no successful Get within {FIRST_GET_TIMEOUT:?}; {}", self.log_tail());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the sidecar exited ({status}); {}", self.log_tail());
            }
            if api.is_none() && self.socket.exists() {
                api = client::connect(&addr).await.ok();
            }
            if let Some(client) = &mut api {
                let request = proto::GetRequest { key: key.to_owned(), ..Default::default() };
                match client.get(request).await {
                    Ok(reply) => {
                        let elapsed = self.started.elapsed();
                        return Ok((elapsed, reply.into_inner().revision));
                    }
                    // Not ready yet: nothing restored or resolved so far.
                    Err(status) if status.code() == tonic::Code::Unavailable => {}
                    Err(status) => bail!("Get {key}: {status}; {}", self.log_tail()),
                }
            }
            // A std sleep: tokio's timer counts in milliseconds.
            tokio::task::spawn_blocking(|| std::thread::sleep(POLL)).await?;
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        format!("the sidecar's last log lines: {:?}", tail.into_iter().rev().collect::<Vec<_>>())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sidecar's memory, from /proc (Linux only).
struct Memory {
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
}

impl Memory {
    fn of(pid: u32) -> Option<Memory> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            anon_kib: field("RssAnon:")?,
            file_kib: field("RssFile:")? + field("RssShmem:").unwrap_or(0),
            threads: field("Threads:")?,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        json!({"rss": self.rss_kib, "anonymous": self.anon_kib, "file": self.file_kib, "threads": self.threads})
    }
}

/// A scratch directory, removed when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("veltrix-bench-startup-{}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

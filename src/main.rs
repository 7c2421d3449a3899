//! parse args → runtime → telemetry → settings (exit 64 when bad) → bind → serve until a
//! signal.

use std::{io, process::ExitCode};

use clap::Parser;
use tokio::{
    runtime::{Builder, Runtime},
    signal::unix::{SignalKind, signal},
};
use veltrix_sidecar::{
    app::{self, Listeners},
    cli::{self, Cli, Command, ServeArgs},
    config::LogFormat,
    telemetry,
};

/// EX_USAGE from sysexits.h: the command line or a setting was wrong.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match &cli.command {
        Command::Serve(args) => serve_runtime(args.worker_threads),
        _ => Runtime::new(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => return serve(&args).await,
            Command::Get { key, context } => cli::get(&key, &context, &cli.client).await,
            Command::List { prefix } => cli::list(prefix.as_deref(), &cli.client).await,
            Command::Watch { targets, from_revision, context } => {
                cli::watch(&targets, from_revision, &context, &cli.client).await
            }
            Command::Status => cli::status(&cli.client).await,
            Command::Explain { key, context } => cli::explain(&key, &context, &cli.client).await,
            Command::Check { dir, labels } => {
                return cli::check(&dir, &labels)
                    .map(|clean| if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
                    .or_else(|error| {
                        eprintln!("error: {error:#}");
                        Ok(ExitCode::FAILURE)
                    });
            }
            Command::Graph { dir, labels } => cli::graph(&dir, &labels),
            Command::Bench(cli::Bench::Resolve(bench)) => veltrix_sidecar::bench::resolve(&bench).await,
            Command::Bench(cli::Bench::Load(bench)) => veltrix_sidecar::bench::load(&bench, &cli.client.addr).await,
            Command::Bench(cli::Bench::Fanout(bench)) => veltrix_sidecar::bench::fanout(&bench).await,
            Command::Bench(cli::Bench::Startup(bench)) => veltrix_sidecar::bench::startup(&bench).await,
        }
        .map(|()| ExitCode::SUCCESS)
        .or_else(|error| {
            eprintln!("error: {error:#}");
            Ok(ExitCode::FAILURE)
        })
    });
    result.unwrap_or_else(|error: anyhow::Error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

async fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = match args.raw_settings().and_then(|raw| {
        let filter = telemetry::parse_filter(&raw.log_level()?).map_err(anyhow::Error::msg)?;
        telemetry::init(raw.log_format.unwrap_or(LogFormat::Human), filter);
        Ok(raw.validate()?)
    }) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: invalid settings: {error:#}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let listeners = Listeners::bind(&settings).await?;
    app::run(settings, listeners, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// A single-threaded runtime unless more threads are asked for. On one core, tokio's
/// multi-thread scheduler runs the task that the running task just woke next: when a Get
/// completes, its connection is polled at once and writes that one response, where the
/// single-threaded scheduler finishes every ready request before the connection writes
/// them out together. Serving the same Gets took 5 times the `writev` calls and 60% more
/// CPU per request (BENCHMARKS.md), and a sidecar usually gets a fraction of one core.
/// Resolution runs on a blocking thread either way.
fn serve_runtime(worker_threads: u16) -> io::Result<Runtime> {
    if worker_threads == 1 {
        Builder::new_current_thread().enable_all().build()
    } else {
        Builder::new_multi_thread().worker_threads(usize::from(worker_threads)).enable_all().build()
    }
}

/// SIGTERM (Kubernetes, systemd) or SIGINT (a terminal).
async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process can still be killed; serve regardless.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

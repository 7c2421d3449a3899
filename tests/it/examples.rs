//! The engine examples in other languages, built and run against a real sidecar.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    services::REQUIRE_SERVICES,
    support::{DEADLINE, KillOnDrop, Serve, ServeDirs, write},
};

/// The Python with the examples' packages, as `scripts/test` installs it.
fn examples_python() -> Option<PathBuf> {
    match std::env::var_os("VELTRIX_EXAMPLES_PYTHON") {
        Some(python) => Some(PathBuf::from(python)),
        None => {
            assert!(
                std::env::var(REQUIRE_SERVICES).as_deref() != Ok("1"),
                "the Python example is required ({REQUIRE_SERVICES}=1) but VELTRIX_EXAMPLES_PYTHON is not set; run scripts/test"
            );
            eprintln!("skipping: run through scripts/test, which installs the example's packages");
            None
        }
    }
}

/// Lines a child prints, read on their own thread.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    lines
}

fn next_line_starting(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut skipped = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(line) => skipped.push(line),
            Err(_) => panic!("no line starting with {prefix:?}; the example printed {skipped:?}"),
        }
    }
}

#[test]
fn the_python_example_reads_watches_and_resumes_after_a_restart() {
    let Some(python) = examples_python() else { return };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let stubs = tempfile::tempdir().expect("temp dir");
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo.join("proto"))
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(repo.join("proto/veltrix/config/v1/config.proto"))
        .output()
        .expect("grpc_tools.protoc");
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));

    let dirs = ServeDirs::new();
    write(&dirs.config, "server/tick.yaml", "rate: 30\n");
    write(&dirs.config, "matchmaking/rules.json", r#"{"party": 4}"#);
    let mut sidecar = Serve::start(dirs.args(&[]));
    let mut example = KillOnDrop(
        Command::new(&python)
            .arg(repo.join("examples/python/engine_client.py"))
            .args(["server/tick", "matchmaking/rules"])
            .env("VELTRIX_SIDECAR_ADDR", dirs.addr())
            .env("PYTHONPATH", stubs.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example"),
    );
    let lines = lines_of(&mut example.0);
    assert_eq!(next_line_starting(&lines, "get "), r#"get server/tick 1 {"rate":30}"#);
    assert_eq!(next_line_starting(&lines, "batch "), "batch 1 server/tick,matchmaking/rules");

    write(&dirs.config, "server/tick.yaml", "rate: 60\n");
    assert_eq!(next_line_starting(&lines, "change "), r#"change server/tick 2 {"rate":60}"#);

    // The sidecar restarts; a change made meanwhile still arrives, once.
    sidecar.kill();
    write(&dirs.config, "server/tick.yaml", "rate: 20\n");
    std::thread::sleep(Duration::from_millis(100));
    let _restarted = Serve::start(dirs.args(&[]));
    assert!(next_line_starting(&lines, "reconnect ").starts_with("reconnect 2 "));
    assert_eq!(next_line_starting(&lines, "change "), r#"change server/tick 3 {"rate":20}"#);
}

#[test]
fn the_cpp_example_publishes_each_change_to_its_game_loop_and_resumes_after_a_restart() {
    let cmake = Command::new("sh").args(["-c", "command -v cmake && pkg-config --exists grpc++"]).output();
    if !cmake.is_ok_and(|output| output.status.success()) {
        assert!(
            std::env::var(REQUIRE_SERVICES).as_deref() != Ok("1"),
            "the C++ example is required ({REQUIRE_SERVICES}=1) but CMake or gRPC C++ is missing; run scripts/install-test-services"
        );
        eprintln!("skipping: CMake or gRPC C++ is not installed (scripts/install-test-services installs them)");
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let build = tempfile::tempdir().expect("temp dir");
    for args in [
        vec![
            "-S".into(),
            repo.join("examples/cpp").display().to_string(),
            "-B".into(),
            build.path().display().to_string(),
        ],
        vec!["--build".into(), build.path().display().to_string(), "-j2".into()],
    ] {
        let built = Command::new("cmake").args(&args).output().expect("cmake");
        assert!(
            built.status.success(),
            "cmake {args:?}: {}{}",
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr)
        );
    }

    let dirs = ServeDirs::new();
    write(&dirs.config, "server/tick.yaml", "rate: 30\n");
    let mut sidecar = Serve::start(dirs.args(&[]));
    let mut example = KillOnDrop(
        Command::new(build.path().join("engine_client"))
            .arg("server/tick")
            .env("VELTRIX_SIDECAR_ADDR", dirs.addr())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example"),
    );
    let lines = lines_of(&mut example.0);
    assert_eq!(next_line_starting(&lines, "ready "), "ready 1");
    assert!(next_line_starting(&lines, "tick ").ends_with(r#"revision 1 {"rate":30}"#));

    write(&dirs.config, "server/tick.yaml", "rate: 60\n");
    assert!(next_line_starting(&lines, "tick ").ends_with(r#"revision 2 {"rate":60}"#));

    sidecar.kill();
    write(&dirs.config, "server/tick.yaml", "rate: 20\n");
    std::thread::sleep(Duration::from_millis(100));
    let _restarted = Serve::start(dirs.args(&[]));
    assert!(
        next_line_starting(&lines, "tick ").ends_with(r#"revision 3 {"rate":20}"#),
        "the change made while it was down"
    );
}

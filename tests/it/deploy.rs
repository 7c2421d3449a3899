//! The deployment files: checked by the tools that will read them, and against what the
//! sidecar really exports and takes.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use serde_json::Value;

use crate::{admin::http, services::available, support::*};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn check(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).current_dir(repo(".")).output().expect("run the checker");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_files_pass_promtool() {
    if !available("promtool", "promtool") {
        return;
    }
    check("promtool", &["check", "rules", "deploy/prometheus/alerts.yml"]);
    check("promtool", &["check", "config", "deploy/prometheus/prometheus.yml"]);
}

#[test]
fn the_systemd_unit_verifies() {
    // Optional: systemd-analyze is not on every machine, and CI does not require it.
    let found =
        Command::new("sh").args(["-c", "command -v systemd-analyze"]).output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    }
    // verify wants the program to exist: point the unit at the binary under test.
    let unit = read("deploy/systemd/veltrix-sidecar.service")
        .replace("/usr/local/bin/veltrix-sidecar", env!("CARGO_BIN_EXE_veltrix-sidecar"));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("veltrix-sidecar.service");
    std::fs::write(&path, unit).expect("write unit");
    let output = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("veltrix-sidecar.service:"), "warnings about the unit: {stderr}");
}

/// Every `veltrix_*` metric name in `text`, with histogram suffixes taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("veltrix_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.clone(), |name, suffix| name.strip_suffix(suffix).map_or(name.clone(), str::to_owned));
        names.insert(base);
    }
    names
}

#[tokio::test]
async fn alerts_and_dashboard_use_only_metrics_the_sidecar_exports() {
    let sidecar = Sidecar::start(&[("a.json", "{}")]).await;
    let (_, scraped) = http(sidecar.admin.as_deref().expect("admin"), "GET", "/metrics", "").await;
    sidecar.stop().await;
    let exported: BTreeSet<String> = scraped
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .map(str::to_owned)
        .collect();

    let alerts: Value = serde_norway::from_str(&read("deploy/prometheus/alerts.yml")).expect("alerts YAML");
    let expressions: Vec<String> = alerts["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|rule| rule["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(expressions.len() >= 3, "alert rules: {expressions:?}");
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/veltrix-sidecar-dashboard.json")).expect("dashboard JSON");
    let mut used = metric_names(&expressions.join("\n"));
    used.extend(metric_names(&dashboard.to_string()));
    let unknown: Vec<&String> = used.iter().filter(|name| !exported.contains(*name)).collect();
    assert!(unknown.is_empty(), "metrics that /metrics does not export: {unknown:?}");
    for name in ["veltrix_upstream_connected", "veltrix_modules_rejected", "veltrix_upstream_last_sync_age_seconds"] {
        assert!(metric_names(&expressions.join("\n")).contains(name), "no alert on {name}");
    }
}

#[test]
fn the_game_server_pod_starts_the_sidecar_first_and_shares_its_socket() {
    let pod: Value = serde_norway::from_str(&read("deploy/kubernetes/game-server-pod.yaml")).expect("pod YAML");
    let spec = &pod["spec"];
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    let env = |container: &Value, name: &str| -> Option<String> {
        container["env"].as_array()?.iter().find(|var| var["name"] == name)?["value"].as_str().map(str::to_owned)
    };
    let socket = env(sidecar, "VELTRIX_SOCKET").expect("the sidecar's socket");
    let engine = &spec["containers"][0];
    assert_eq!(env(engine, "VELTRIX_SIDECAR_ADDR"), Some(format!("unix:{socket}")));
    let socket_dir = socket.rsplit_once('/').map(|(dir, _)| dir.to_owned()).expect("a directory");
    let mount_of = |container: &Value| -> Option<String> {
        container["volumeMounts"].as_array()?.iter().find(|mount| mount["mountPath"] == socket_dir.as_str())?["name"]
            .as_str()
            .map(str::to_owned)
    };
    let volume = mount_of(sidecar).expect("the sidecar mounts the socket directory");
    assert_eq!(mount_of(engine), Some(volume.clone()), "the engine mounts the same volume");
    let volumes = spec["volumes"].as_array().expect("volumes");
    assert!(volumes.iter().any(|v| v["name"] == volume.as_str() && v.get("emptyDir").is_some()), "an emptyDir");

    // Every VELTRIX_ variable the pod sets is one the binary reads.
    let help = Command::new(env!("CARGO_BIN_EXE_veltrix-sidecar")).args(["serve", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for var in sidecar["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("a name");
        if name.starts_with("VELTRIX_") && !matches!(name, "VELTRIX_REGION" | "VELTRIX_MODE") {
            assert!(help.contains(&format!("[env: {name}")), "serve does not read {name}");
        }
    }
}

#[test]
fn the_relay_deployment_serves_tls_with_a_token_and_the_pod_follows_it() {
    use serde::Deserialize;
    let text = read("deploy/kubernetes/relay.yaml");
    let documents: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("relay YAML"))
        .collect();
    let of_kind = |kind: &str| documents.iter().find(|document| document["kind"] == kind).expect(kind).clone();
    let (deployment, service) = (of_kind("Deployment"), of_kind("Service"));
    let relay = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env = |container: &Value, name: &str| -> Option<String> {
        container["env"].as_array()?.iter().find(|var| var["name"] == name)?["value"].as_str().map(str::to_owned)
    };
    assert_eq!(env(relay, "VELTRIX_ROLE").as_deref(), Some("relay"));
    assert!(env(relay, "VELTRIX_SOURCE").is_some_and(|source| source.starts_with("etcd://")));
    assert_eq!(relay["readinessProbe"]["httpGet"]["path"], "/readyz");

    // Listening off loopback: the TLS files and the token come from mounted Secrets.
    let listen = env(relay, "VELTRIX_LISTEN").expect("a listen address");
    assert!(listen.starts_with("0.0.0.0:"));
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_array().expect("volumes").clone();
    let secret_behind = |path: &str| -> Option<String> {
        let mount = relay["volumeMounts"]
            .as_array()?
            .iter()
            .find(|mount| mount["mountPath"].as_str().is_some_and(|dir| path.starts_with(&format!("{dir}/"))))?;
        let volume = volumes.iter().find(|volume| volume["name"] == mount["name"])?;
        volume["secret"]["secretName"].as_str().map(str::to_owned)
    };
    for var in ["VELTRIX_TLS_CERT", "VELTRIX_TLS_KEY", "VELTRIX_TOKEN_FILE"] {
        let path = env(relay, var).unwrap_or_else(|| panic!("{var} is set"));
        assert!(secret_behind(&path).is_some(), "{var}={path} is not in a mounted Secret");
    }

    // The Service reaches the relay port, and the game-server pod follows that Service.
    let port = listen.rsplit_once(':').map(|(_, port)| port.to_owned()).expect("a port");
    let relay_port =
        relay["ports"].as_array().expect("ports").iter().find(|p| p["name"] == "relay").expect("relay port");
    assert_eq!(relay_port["containerPort"].to_string(), port);
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], "relay");
    let pod: Value = serde_norway::from_str(&read("deploy/kubernetes/game-server-pod.yaml")).expect("pod YAML");
    let sidecar = &pod["spec"]["initContainers"][0];
    let service_name = service["metadata"]["name"].as_str().expect("a name");
    assert_eq!(env(sidecar, "VELTRIX_SOURCE"), Some(format!("grpcs://{service_name}:{}", service_port["port"])));
    assert!(env(sidecar, "VELTRIX_UPSTREAM_CA").is_some() && env(sidecar, "VELTRIX_UPSTREAM_TOKEN_FILE").is_some());

    // Every VELTRIX_ variable is one the binary reads.
    let help = Command::new(env!("CARGO_BIN_EXE_veltrix-sidecar")).args(["serve", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for var in relay["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("a name");
        assert!(help.contains(&format!("[env: {name}")), "serve does not read {name}");
    }
}

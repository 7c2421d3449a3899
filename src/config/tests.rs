use super::*;

fn raw_with_source() -> RawSettings {
    RawSettings {
        source: Some(env!("CARGO_MANIFEST_DIR").to_owned()),
        socket: Some("none".into()),
        ..Default::default()
    }
}

fn error_of(raw: RawSettings) -> String {
    match raw.validate() {
        Ok(settings) => panic!("accepted {settings:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn defaults() {
    let settings = raw_with_source().validate().expect("defaults are valid");
    assert_eq!(settings.listen, Some("127.0.0.1:7070".parse().expect("literal")));
    assert_eq!(settings.max_keys_per_request, 1000);
    assert_eq!(settings.progress_interval, Duration::from_secs(10));
}

#[test]
fn non_loopback_listen_is_refused() {
    let error = error_of(RawSettings { listen: Some("0.0.0.0:7070".into()), ..raw_with_source() });
    assert!(error.starts_with("listen: 0.0.0.0:7070 is not a loopback address"), "{error}");
    assert!(error_of(RawSettings { listen: Some("localhost".into()), ..raw_with_source() }).contains("IP:PORT"));
    let ok = RawSettings { listen: Some("[::1]:0".into()), ..raw_with_source() }.validate();
    assert!(ok.is_ok());
}

#[test]
fn bad_settings_name_the_setting() {
    let cases = [
        (
            RawSettings { source: Some("consul://127.0.0.1:8500/x".into()), ..raw_with_source() },
            "source: unsupported scheme \"consul\"",
        ),
        (
            RawSettings { source: Some("etcd:///x".into()), ..raw_with_source() },
            "source: \"etcd:///x\" names no etcd server",
        ),
        (
            RawSettings { source: Some("zk://h:99999/x".into()), ..raw_with_source() },
            "source: zookeeper server \"h:99999\" has no valid port",
        ),
        (
            RawSettings { backoff_min: Some("5s".into()), backoff_max: Some("1s".into()), ..raw_with_source() },
            "backoff-min: backoff minimum 5s is above its maximum 1s",
        ),
        (
            RawSettings { upstream_user: Some("root".into()), ..raw_with_source() },
            "upstream-user: needs a password too",
        ),
        (
            RawSettings { source: Some("/no/such/dir".into()), ..raw_with_source() },
            "source: /no/such/dir is not a directory",
        ),
        (
            RawSettings { progress_interval: Some("10".into()), ..raw_with_source() },
            "progress-interval: \"10\" is not a duration",
        ),
        (RawSettings { debounce: Some("0ms".into()), ..raw_with_source() }, "debounce: must be greater than 0"),
        (
            RawSettings { max_keys_per_request: Some(0), ..raw_with_source() },
            "max-keys-per-request: must be greater than 0",
        ),
        (
            RawSettings { socket: Some("/no/such/dir/s.sock".into()), ..raw_with_source() },
            "socket: directory /no/such/dir does not exist",
        ),
        (
            RawSettings { listen: Some("none".into()), ..raw_with_source() },
            "listen: both the TCP listener and the unix socket are turned off",
        ),
    ];
    for (raw, expected) in cases {
        let error = error_of(raw);
        assert!(error.starts_with(expected), "{error:?} should start with {expected:?}");
    }
}

#[test]
fn etcd_sources() {
    let settings = RawSettings {
        source: Some("etcd://127.0.0.1:2379,127.0.0.1:2479/veltrix/config/".into()),
        ..raw_with_source()
    }
    .validate()
    .expect("valid");
    assert_eq!(
        settings.source,
        SourceUri::Etcd {
            endpoints: vec!["127.0.0.1:2379".into(), "127.0.0.1:2479".into()],
            prefix: "/veltrix/config/".into()
        }
    );
    assert_eq!(settings.source.to_string(), "etcd://127.0.0.1:2379,127.0.0.1:2479/veltrix/config/");
    let zk = RawSettings { source: Some("zk://127.0.0.1:2181/veltrix/config".into()), ..raw_with_source() }
        .validate()
        .expect("valid");
    assert_eq!(
        zk.source,
        SourceUri::ZooKeeper { servers: vec!["127.0.0.1:2181".into()], root: "/veltrix/config".into() }
    );
}

#[test]
fn labels() {
    assert_eq!(parse_label("region=eu").ok(), Some(("region".to_owned(), "eu".to_owned())));
    assert!(parse_label("region").is_err());
    assert!(parse_label("region=").is_err());
    assert!(parse_label("re gion=eu").is_err());
    let list = parse_label_list("region=eu, mode=ranked").expect("valid list");
    assert_eq!(list.get("mode").map(String::as_str), Some("ranked"));
}

#[test]
fn settings_file_with_line_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n[labels]\nregion = \"eu\"\n").expect("write");
    let raw = RawSettings::from_file(&path).expect("valid file");
    assert_eq!(raw.listen.as_deref(), Some("127.0.0.1:9000"));
    let flags = RawSettings { listen: Some("127.0.0.1:9001".into()), ..Default::default() };
    assert_eq!(flags.over(raw).listen.as_deref(), Some("127.0.0.1:9001"), "flags win over the file");

    std::fs::write(&path, "listen = \"x\"\nlisten_typo = 1\n").expect("write");
    let error = RawSettings::from_file(&path).expect_err("unknown field").to_string();
    assert!(error.contains("sidecar.toml:2: unknown field `listen_typo`"), "{error}");
}

#[test]
fn relay_sources_parse_with_failover_lists_and_prefixes() {
    let parse = |text: &str| parse_source(text, true).expect("valid");
    assert_eq!(
        parse("grpc://r1:7443,r2:7443/games/arena"),
        SourceUri::Relay {
            transport: RelayTransport::Grpc,
            tls: false,
            endpoints: vec!["r1:7443".into(), "r2:7443".into()],
            prefix: "games/arena/".into(),
        }
    );
    assert_eq!(
        parse("https://r1:443"),
        SourceUri::Relay {
            transport: RelayTransport::Http,
            tls: true,
            endpoints: vec!["r1:443".into()],
            prefix: "".into()
        }
    );
    assert_eq!(parse("grpcs://r1:7443,r2:7443/games").to_string(), "grpcs://r1:7443,r2:7443/games/");
    assert!(parse_source("grpc://r1/games", true).unwrap_err().to_string().contains("HOST:PORT"));
    let error = error_of(RawSettings { source: Some("grpcs://r1:7443".into()), ..raw_with_source() });
    assert!(error.starts_with("upstream-ca:"), "{error}");
}

#[test]
fn a_relay_listens_off_loopback_only_with_tls_and_a_token() {
    let relay = |listen: &str| RawSettings {
        role: Some(Role::Relay),
        listen: Some(listen.into()),
        socket: None,
        ..raw_with_source()
    };
    let error = error_of(relay("0.0.0.0:7443"));
    assert!(error.contains("missing: TLS and the token"), "{error}");
    let error = error_of(RawSettings { token: Some("t".into()), ..relay("0.0.0.0:7443") });
    assert!(error.ends_with("missing: TLS"), "{error}");
    let error = error_of(RawSettings { token: Some("\n".into()), ..relay("127.0.0.1:7443") });
    assert!(error.contains("token is empty"), "{error}");
    let error = error_of(RawSettings { tls_cert: Some("/nonexistent.pem".into()), ..relay("127.0.0.1:7443") });
    assert!(error.contains("needs its key"), "{error}");
    let error = error_of(RawSettings {
        tls_cert: Some("/nonexistent.pem".into()),
        tls_key: Some("/nonexistent-key.pem".into()),
        ..relay("127.0.0.1:7443")
    });
    assert!(error.starts_with("tls-cert: /nonexistent.pem"), "{error}");
    // On loopback, neither is needed; and a relay has no unix socket unless asked.
    let settings = relay("127.0.0.1:7443").validate().expect("valid");
    assert_eq!(settings.socket, None);
    let error = error_of(RawSettings { role: None, token: Some("t".into()), ..relay("0.0.0.0:7443") });
    assert!(error.contains("listens on 127.0.0.1, [::1] or a unix socket only"), "{error}");
}

//! The configuration layer through gRPC: dependencies, rejections that keep the last
//! good values, request labels, Explain, and the offline `check` and `graph` commands.

use serde_json::json;
use tonic::Code;
use veltrix_sidecar::{
    api::{proto, proto::watch_response::Kind},
    config::RawSettings,
};

use crate::support::*;

async fn status(client: &mut Client) -> proto::StatusResponse {
    client.status(proto::StatusRequest {}).await.expect("status").into_inner()
}

const GAME: &[(&str, &str)] = &[
    ("loot/base.yaml", "rolls: 1\npity: 20\n"),
    (
        "loot/chest.json",
        r#"{"$extends": ["loot/base"], "drops": [{"item": "${items#/sword/id}", "damage": "${items#/sword/damage}"}]}"#,
    ),
    ("loot/crate.json", r#"{"$extends": "loot/base", "rolls": 3}"#),
    ("items.toml", "[sword]\nid = \"sword\"\ndamage = 40\n"),
    ("maps.yaml", "pool: [dunes]\n"),
];

#[tokio::test]
async fn a_cycle_is_rejected_with_its_path_and_the_fix_is_one_change_set() {
    let sidecar = Sidecar::start(GAME).await;
    let mut client = sidecar.client().await;
    let mut stream = watch(&mut client, proto::WatchRequest::default()).await;
    let first = next_event(&mut stream).await;
    assert_eq!(
        values(&first)["loot/chest"],
        json!({"rolls": 1, "pity": 20, "drops": [{"item": "sword", "damage": 40}]})
    );

    sidecar.write("loot/base.yaml", "$extends: [loot/chest]\nrolls: 2\npity: 20\n");
    let rejected = next_event(&mut stream).await;
    assert_eq!(rejected.kind(), Kind::Rejected);
    let reasons: Vec<(String, String)> =
        rejected.rejections.iter().map(|r| (r.key.clone(), r.reason.clone())).collect();
    assert_eq!(
        reasons,
        [
            ("loot/base".to_owned(), "cycle: loot/base → loot/chest → loot/base".to_owned()),
            ("loot/chest".to_owned(), "cycle: loot/base → loot/chest → loot/base".to_owned()),
            ("loot/crate".to_owned(), "depends on loot/base, which is rejected".to_owned()),
        ]
    );
    assert!(rejected.rejections.iter().all(|r| r.serving_previous));
    assert_eq!(rejected.rejections[0].origin, "loot/base.yaml");

    // The old values are still served, and Status names the cycle.
    assert_eq!(get_json(&mut client, "loot/crate").await.expect("served").0, json!({"rolls": 3, "pity": 20}));
    assert_eq!(get_json(&mut client, "loot/base").await.expect("served").0, json!({"rolls": 1, "pity": 20}));
    let rejections = status(&mut client).await.rejections;
    assert_eq!(rejections.len(), 3);
    assert!(rejections[0].reason.contains("loot/base → loot/chest → loot/base"));

    sidecar.write("loot/base.yaml", "rolls: 2\npity: 10\n");
    let fixed = next_event(&mut stream).await;
    assert_eq!(fixed.kind(), Kind::Change);
    assert_eq!(
        values(&fixed),
        [
            ("loot/base".into(), json!({"rolls": 2, "pity": 10})),
            ("loot/chest".into(), json!({"rolls": 2, "pity": 10, "drops": [{"item": "sword", "damage": 40}]})),
            ("loot/crate".into(), json!({"rolls": 3, "pity": 10})),
        ]
        .into(),
        "the fix arrives as one change-set"
    );
    assert!(status(&mut client).await.rejections.is_empty());
    sidecar.stop().await;
}

#[tokio::test]
async fn a_base_change_reaches_watchers_of_its_dependents_and_only_those() {
    let sidecar = Sidecar::start(GAME).await;
    let mut chest_client = sidecar.client().await;
    let mut maps_client = sidecar.client().await;
    let mut chest =
        watch(&mut chest_client, proto::WatchRequest { keys: vec!["loot/chest".into()], ..Default::default() }).await;
    let mut maps =
        watch(&mut maps_client, proto::WatchRequest { keys: vec!["maps".into()], ..Default::default() }).await;
    assert_eq!(next_event(&mut chest).await.kind(), Kind::Snapshot);
    assert_eq!(next_event(&mut maps).await.kind(), Kind::Snapshot);

    sidecar.write("items.toml", "[sword]\nid = \"sword\"\ndamage = 55\n");
    let change = next_event(&mut chest).await;
    assert_eq!((change.kind(), change.revision), (Kind::Change, 2));
    assert_eq!(values(&change)["loot/chest"]["drops"][0]["damage"], json!(55), "a reference target changed");

    sidecar.write("loot/base.yaml", "rolls: 5\npity: 20\n");
    let change = next_event(&mut chest).await;
    assert_eq!((change.kind(), change.revision), (Kind::Change, 3));
    assert_eq!(values(&change)["loot/chest"]["rolls"], json!(5), "a base changed");

    sidecar.write("maps.yaml", "pool: [dunes, docks]\n");
    let change = next_event(&mut maps).await;
    assert_eq!(change.revision, 4, "the maps watcher heard nothing of revisions 2 and 3");

    // The chest watcher hears nothing of revision 4: its next message is revision 5.
    sidecar.write(
        "loot/base.yaml",
        "rolls: 6
pity: 20
",
    );
    assert_eq!(next_event(&mut chest).await.revision, 5);
    sidecar.stop().await;
}

#[tokio::test]
async fn request_labels_select_overlays_through_a_bounded_cache() {
    let files = [
        ("mm/queues.yaml", "wait: 60\nregion: any\n"),
        ("mm/queues@region=eu.yaml", "wait: 30\nregion: eu\n"),
        ("mm/queues@mode=ranked,region=eu.yaml", "wait: 90\n"),
        ("mm/rules.json", r#"{"wait": "${mm/queues#/wait}"}"#),
    ];
    let extra = RawSettings { context_cache_bytes: Some(64 * 1024), ..Default::default() };
    let sidecar = Sidecar::start_with(&files, extra).await;
    let mut client = sidecar.client().await;
    let get = |labels: &[(&str, &str)], key: &str| proto::GetRequest {
        key: key.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    let json_of = |response: proto::GetResponse| -> serde_json::Value {
        serde_json::from_slice(&response.entry.expect("entry").json).expect("JSON")
    };

    let plain = json_of(client.get(get(&[], "mm/queues")).await.expect("get").into_inner());
    assert_eq!(plain, json!({"wait": 60, "region": "any"}));
    let eu = json_of(client.get(get(&[("region", "eu")], "mm/queues")).await.expect("get").into_inner());
    assert_eq!(eu, json!({"wait": 30, "region": "eu"}));
    let ranked =
        json_of(client.get(get(&[("region", "eu"), ("mode", "ranked")], "mm/rules")).await.expect("get").into_inner());
    assert_eq!(ranked, json!({"wait": 90}), "references resolve under the request's labels too");

    let batch = client
        .batch_get(proto::BatchGetRequest {
            keys: vec!["mm/queues".into(), "mm/rules".into()],
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    let waits: Vec<serde_json::Value> = batch
        .entries
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.json).expect("JSON")["wait"].clone())
        .collect();
    assert_eq!(waits, [json!(30), json!(30)]);

    let refused = client.get(get(&[("bad label", "x")], "mm/queues")).await.expect_err("bad label");
    assert_eq!(refused.code(), Code::InvalidArgument);

    // A flood of distinct contexts stays within the cache's bound.
    for n in 0..2000 {
        let value = format!("v{n}");
        client.get(get(&[("player", &value)], "mm/queues")).await.expect("get");
    }
    let cached = status(&mut client).await.context_cache_entries;
    assert!(cached > 0 && cached <= 64 * 1024 / 256, "{cached} entries cached");

    // A labeled watch hears what changes under its labels.
    let mut stream = watch(
        &mut client,
        proto::WatchRequest {
            keys: vec!["mm/queues".into()],
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    let first = next_event(&mut stream).await;
    assert_eq!(values(&first)["mm/queues"], json!({"wait": 30, "region": "eu"}));
    sidecar.write("mm/queues@region=eu.yaml", "wait: 25\nregion: eu\n");
    let change = next_event(&mut stream).await;
    assert_eq!(change.kind(), Kind::Change);
    assert_eq!(values(&change)["mm/queues"], json!({"wait": 25, "region": "eu"}));
    assert_eq!(
        get_json(&mut client, "mm/queues").await.expect("get").0,
        json!({"wait": 60, "region": "any"}),
        "the instance's own value is untouched"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn explain_shows_layers_fields_and_references() {
    let mut files = GAME.to_vec();
    files.push(("loot/chest@region=eu.yaml", "pity: 5\n"));
    let extra = RawSettings { labels: Some([("region".to_owned(), "eu".to_owned())].into()), ..Default::default() };
    let sidecar = Sidecar::start_with(&files, extra).await;
    let mut client = sidecar.client().await;
    let explained = client
        .explain(proto::ExplainRequest { key: "loot/chest".into(), ..Default::default() })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(explained.layers, ["extends loot/base", "loot/chest", "loot/chest@region=eu"]);
    assert_eq!(explained.fields.get("rolls").map(String::as_str), Some("extends loot/base"));
    assert_eq!(explained.fields.get("pity").map(String::as_str), Some("loot/chest@region=eu"));
    assert_eq!(explained.fields.get("drops").map(String::as_str), Some("loot/chest"));
    let references: Vec<(&str, &str)> =
        explained.references.iter().map(|r| (r.path.as_str(), r.reference.as_str())).collect();
    assert_eq!(references, [("/drops/0/damage", "${items#/sword/damage}"), ("/drops/0/item", "${items#/sword/id}")]);
    let value: serde_json::Value = serde_json::from_slice(&explained.json).expect("JSON");
    assert_eq!(value, get_json(&mut client, "loot/chest").await.expect("get").0, "explains what is served");

    let missing =
        client.explain(proto::ExplainRequest { key: "nope".into(), ..Default::default() }).await.expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    sidecar.stop().await;
}

#[test]
fn check_reports_file_line_and_reason_and_graph_prints_dot() {
    const BIN: &str = env!("CARGO_BIN_EXE_veltrix-sidecar");
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in GAME {
        write(dir.path(), name, text);
    }
    let check = std::process::Command::new(BIN).arg("check").arg(dir.path()).output().expect("check");
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("5 modules resolved, none rejected"));

    write(dir.path(), "maps.yaml", "pool: [dunes\nweights: 1\n");
    write(dir.path(), "loot/crate.json", r#"{"$extends": "loot/base", "key": "${keys#/crate}"}"#);
    let check = std::process::Command::new(BIN).arg("check").arg(dir.path()).output().expect("check");
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    let maps = format!("{}:2: ", dir.path().join("maps.yaml").display());
    assert!(stderr.contains(&maps), "{stderr}");
    let crate_line =
        format!("{}: reference ${{keys#/crate}} at /key: no module keys", dir.path().join("loot/crate.json").display());
    assert!(stderr.contains(&crate_line), "{stderr}");
    assert!(stderr.contains("3 modules resolved, 2 rejected"), "{stderr}");

    let graph = std::process::Command::new(BIN).arg("graph").arg(dir.path()).output().expect("graph");
    let dot = String::from_utf8_lossy(&graph.stdout);
    assert!(dot.starts_with("digraph config {"), "{dot}");
    assert!(dot.contains(r#""loot/chest" -> "loot/base" [label="extends"];"#), "{dot}");
    assert!(dot.contains(r#""loot/chest" -> "items" [label="reference"];"#), "{dot}");
    assert!(dot.contains(r#""loot/crate" [color=red"#), "{dot}");
    assert!(dot.contains(r#""keys" [style=dashed"#), "{dot}");
}

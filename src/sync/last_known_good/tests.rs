use serde_json::json;

use super::*;

fn state() -> SavedState {
    let mut modules = Modules::default();
    modules.set(&parse_module_name("mm").expect("valid"), Some(Arc::new(json!({"wait": 60}))));
    modules.set(&parse_module_name("mm@region=eu").expect("valid"), Some(Arc::new(json!({"wait": 30}))));
    SavedState::new("file:///cfg", 42, 7, [("mm".to_owned(), Arc::new(json!({"wait": 30})))].into_iter(), &modules)
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = StateFile::in_dir(dir.path());
    assert!(file.load("file:///cfg").expect("no state is fine").is_none());
    file.save(&state()).expect("save");
    let loaded = file.load("file:///cfg").expect("load").expect("a state");
    assert_eq!(loaded, state());
    let (entries, modules) = loaded.restore();
    assert_eq!(entries.len(), 1);
    let docs = modules.get(&Key::new("mm").expect("valid")).expect("module");
    assert_eq!(docs.overlays.len(), 1);
}

#[test]
fn damage_is_detected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = StateFile::in_dir(dir.path());
    file.save(&state()).expect("save");
    let good = fs::read(file.path()).expect("read");

    let mut flipped = good.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x20;
    fs::write(file.path(), &flipped).expect("write");
    let error = file.load("file:///cfg").expect_err("flipped byte").to_string();
    assert!(error.ends_with("is corrupt: checksum mismatch"), "{error}");

    fs::write(file.path(), &good[..good.len() - 10]).expect("write");
    let error = file.load("file:///cfg").expect_err("truncated").to_string();
    assert!(error.contains("(truncated?)"), "{error}");

    fs::write(file.path(), b"garbage").expect("write");
    assert!(file.load("file:///cfg").expect_err("garbage").to_string().contains("no header line"));

    fs::write(file.path(), &good).expect("write");
    let error = file.load("file:///other").expect_err("other source").to_string();
    assert!(error.contains("was saved from source file:///cfg, not file:///other"), "{error}");
}

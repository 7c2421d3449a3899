use serde_json::json;

use super::*;

fn changes(items: &[(&str, Option<Value>)]) -> BTreeMap<Key, Option<Arc<Value>>> {
    items
        .iter()
        .map(|(key, value)| (Key::new(key).expect("test keys are valid"), value.clone().map(Arc::new)))
        .collect()
}

fn publish(publisher: &mut Publisher, changes: BTreeMap<Key, Option<Arc<Value>>>) -> Option<Revision> {
    publisher.apply(changes, None)
}

fn store(history: usize) -> (Arc<Store>, Publisher) {
    Store::new(StoreLimits { history, watch_backlog: 8 })
}

#[test]
fn first_publish_is_revision_one_even_when_empty() {
    let (store, mut publisher) = store(10);
    assert!(!store.snapshot().is_ready());
    assert_eq!(publish(&mut publisher, BTreeMap::new()), Some(1));
    assert!(store.snapshot().is_ready());
    assert_eq!(publish(&mut publisher, BTreeMap::new()), None, "an empty change after the first is no revision");
}

#[test]
fn revisions_count_change_sets_and_skip_equal_values() {
    let (store, mut publisher) = store(10);
    assert_eq!(publish(&mut publisher, changes(&[("a", Some(json!({"x": 1}))), ("b", Some(json!({})))])), Some(1));
    assert_eq!(publish(&mut publisher, changes(&[("a", Some(json!({"x": 1})))])), None);
    assert_eq!(publish(&mut publisher, changes(&[("a", Some(json!({"x": 2}))), ("b", None), ("zz", None)])), Some(2));
    let snapshot = store.snapshot();
    assert_eq!(snapshot.revision, 2);
    assert_eq!(snapshot.entries.keys().map(Key::as_str).collect::<Vec<_>>(), ["a"]);
    assert_eq!(snapshot.get("a").map(|entry| entry.mod_revision), Some(2));

    let history = store.changes_since(1, 2).expect("history holds revision 2");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].upserts.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(history[0].deletes.iter().map(Key::as_str).collect::<Vec<_>>(), ["b"]);
}

#[test]
fn old_snapshots_stay_as_they_were() {
    let (store, mut publisher) = store(10);
    publish(&mut publisher, changes(&[("a", Some(json!({"v": 1})))]));
    let before = store.snapshot();
    publish(&mut publisher, changes(&[("a", Some(json!({"v": 2})))]));
    assert_eq!(*before.get("a").map(|entry| entry.value.clone()).unwrap_or_default(), json!({"v": 1}));
    assert_eq!(*store.snapshot().get("a").map(|entry| entry.value.clone()).unwrap_or_default(), json!({"v": 2}));
}

#[test]
fn history_is_bounded() {
    let (store, mut publisher) = store(3);
    for n in 0..10 {
        publish(&mut publisher, changes(&[("a", Some(json!({ "n": n })))]));
    }
    assert_eq!(store.snapshot().revision, 10);
    assert!(store.changes_since(6, 10).is_none(), "revision 7 is gone");
    let kept = store.changes_since(7, 10).expect("8, 9 and 10 are kept");
    assert_eq!(kept.iter().map(|change| change.revision).collect::<Vec<_>>(), [8, 9, 10]);
    assert_eq!(store.changes_since(10, 10).map(|changes| changes.len()), Some(0));
}

#[test]
fn prefix_scan() {
    let (store, mut publisher) = store(1);
    publish(
        &mut publisher,
        changes(&[
            ("match", Some(json!({}))),
            ("matchmaking/queues", Some(json!({}))),
            ("matchmaking/rules", Some(json!({}))),
            ("maps/rotation", Some(json!({}))),
        ]),
    );
    let snapshot = store.snapshot();
    let keys = |prefix| snapshot.with_prefix(prefix).map(|entry| entry.key.to_string()).collect::<Vec<_>>();
    assert_eq!(keys("matchmaking/"), ["matchmaking/queues", "matchmaking/rules"]);
    assert_eq!(keys("ma"), ["maps/rotation", "match", "matchmaking/queues", "matchmaking/rules"]);
    assert!(keys("z").is_empty());
}

#[test]
fn only_fresh_rejections_are_announced() {
    let (store, mut publisher) = store(1);
    let mut events = store.subscribe();
    let rejection = Rejection {
        key: "a".into(),
        origin: "a.json".into(),
        line: Some(2),
        reason: "bad".into(),
        serving_previous: false,
    };
    assert_eq!(publisher.set_rejections(vec![rejection.clone()]).len(), 1);
    assert_eq!(publisher.set_rejections(vec![rejection.clone()]).len(), 0);
    assert!(matches!(events.try_recv(), Ok(Event::Rejected { .. })));
    assert!(events.try_recv().is_err());
    assert_eq!(*store.rejections(), vec![rejection]);
}

#[test]
fn new_documents_alone_make_a_revision() {
    let (store, mut publisher) = store(10);
    publish(&mut publisher, changes(&[("a", Some(json!({})))]));
    assert_eq!(publisher.apply(BTreeMap::new(), Some(Arc::new(Modules::default()))), Some(2));
    assert_eq!(store.changes_since(1, 2).map(|changes| changes[0].upserts.len()), Some(0));
}

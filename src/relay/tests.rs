use bytes::Bytes;

use super::*;

fn update(full: bool, revision: Option<i64>, items: &[(&str, Option<&str>)]) -> Update {
    Update {
        full,
        upstream_revision: revision,
        epoch: None,
        changes: items
            .iter()
            .map(|(name, text)| (name.to_string(), text.map(|text| Ok(Bytes::from(text.to_owned())))))
            .collect(),
    }
}

fn names(reply: &Reply) -> Vec<(&str, Option<&str>)> {
    reply
        .documents
        .iter()
        .map(|(name, document)| {
            let text = document.as_ref().map(|document| match document {
                Ok(bytes) => std::str::from_utf8(bytes).unwrap_or("<binary>"),
                Err(error) => error.as_str(),
            });
            (name.as_str(), text)
        })
        .collect()
}

fn at(state: &HubState, revision: i64) -> Position {
    Position { epoch: state.epoch.clone(), revision }
}

#[test]
fn a_client_resumes_with_the_changes_merged_since_its_revision() {
    let hub = Hub::new(Some("etcd://a/".to_owned()), 100);
    hub.apply(&update(true, Some(10), &[("a.json", Some("1")), ("b.json", Some("1")), ("x/c.json", Some("1"))]));
    hub.apply(&update(false, Some(12), &[("a.json", Some("2"))]));
    hub.apply(&update(false, Some(15), &[("a.json", Some("3")), ("b.json", None)]));
    let state = hub.state();
    assert_eq!((state.revision, &*state.epoch), (15, "etcd://a/"));

    let snapshot = state.reply("", None);
    assert_eq!(snapshot.kind, ReplyKind::Snapshot);
    assert_eq!(names(&snapshot), [("a.json", Some("3")), ("x/c.json", Some("1"))]);

    let changes = state.reply("", Some(&at(&state, 10)));
    assert_eq!(changes.kind, ReplyKind::Changes);
    assert_eq!(names(&changes), [("a.json", Some("3")), ("b.json", None)]);
    assert_eq!(changes.revision, 15);

    // Between two upstream revisions that changed nothing here: same answer as from 12.
    let changes = state.reply("", Some(&at(&state, 13)));
    assert_eq!(names(&changes), [("a.json", Some("3")), ("b.json", None)]);

    assert_eq!(state.reply("", Some(&at(&state, 15))).kind, ReplyKind::NoChange);
    // A client ahead of this relay (it came from one further along) waits.
    let ahead = state.reply("", Some(&at(&state, 20)));
    assert_eq!((ahead.kind, ahead.revision), (ReplyKind::NoChange, 20));
}

#[test]
fn prefixes_select_documents_and_a_change_elsewhere_only_moves_the_revision() {
    let hub = Hub::new(None, 100);
    hub.apply(&update(true, None, &[("game/a.json", Some("1")), ("gamex.json", Some("1")), ("ops/b.json", Some("1"))]));
    hub.apply(&update(false, None, &[("ops/b.json", Some("2"))]));
    let state = hub.state();
    assert_eq!(state.revision, 2);
    assert_eq!(names(&state.reply("game/", None)), [("game/a.json", Some("1"))]);
    let quiet = state.reply("game/", Some(&at(&state, 1)));
    assert_eq!((quiet.kind, quiet.revision), (ReplyKind::NoChange, 2));
}

#[test]
fn another_epoch_or_a_revision_older_than_history_gets_the_whole_state() {
    let hub = Hub::new(Some("etcd://a/".to_owned()), 2);
    hub.apply(&update(true, Some(1), &[("a.json", Some("1"))]));
    for revision in 2..=5 {
        hub.apply(&update(false, Some(revision), &[("a.json", Some(&revision.to_string()))]));
    }
    let state = hub.state();
    // History keeps revisions 4 and 5: from 3 on is known, before is not.
    assert_eq!(state.reply("", Some(&at(&state, 3))).kind, ReplyKind::Changes);
    let resync = state.reply("", Some(&at(&state, 2)));
    assert_eq!(resync.kind, ReplyKind::Resync);
    assert_eq!(names(&resync), [("a.json", Some("5"))]);
    let other = state.reply("", Some(&Position { epoch: "elsewhere".into(), revision: 5 }));
    assert_eq!(other.kind, ReplyKind::Resync);
}

#[test]
fn updates_that_change_nothing_publish_nothing_and_full_updates_delete_the_rest() {
    let hub = Hub::new(None, 10);
    hub.apply(&update(true, None, &[("a.json", Some("1")), ("b.json", Some("1"))]));
    let mut states = hub.subscribe();
    states.borrow_and_update();
    hub.apply(&update(false, None, &[("a.json", Some("1"))]));
    assert!(!states.has_changed().expect("hub alive"), "an unchanged document is not a revision");
    hub.apply(&update(true, None, &[("a.json", Some("1"))]));
    let state = hub.state();
    assert_eq!(state.revision, 2);
    assert_eq!(names(&state.reply("", Some(&at(&state, 1)))), [("b.json", None)]);
}

#[test]
fn an_empty_upstream_is_a_state_and_errors_pass_through() {
    let hub = Hub::new(None, 10);
    assert!(!hub.state().ready);
    hub.apply(&update(true, None, &[]));
    assert!(hub.state().ready);
    let mut broken = update(false, None, &[]);
    broken.changes.insert("big.json".to_owned(), Some(Err("value is 9 bytes, over the limit of 8".to_owned())));
    hub.apply(&broken);
    let state = hub.state();
    assert_eq!(names(&state.reply("", None)), [("big.json", Some("value is 9 bytes, over the limit of 8"))]);
}

use bytes::Bytes;
use serde_json::json;

use super::*;

fn update(full: bool, items: &[(&str, Option<&str>)]) -> Update {
    Update {
        full,
        changes: items
            .iter()
            .map(|(name, text)| (name.to_string(), text.map(|text| Ok(Bytes::from(text.to_owned())))))
            .collect(),
    }
}

fn changed(outcome: &Outcome) -> Vec<(String, Option<Value>)> {
    outcome.changes.iter().map(|(key, value)| (key.to_string(), value.as_deref().cloned())).collect()
}

fn reasons(outcome: &Outcome) -> Vec<String> {
    outcome.rejections.iter().map(ToString::to_string).collect()
}

#[test]
fn documents_become_modules() {
    let mut documents = Documents::default();
    let outcome = documents.apply(
        update(true, &[("a.json", Some(r#"{"x": 1}"#)), ("dir/b.yaml", Some("y: 2")), ("README.md", Some("hi"))]),
        |_| false,
    );
    assert_eq!(
        changed(&outcome),
        [("a".to_owned(), Some(json!({"x": 1}))), ("dir/b".to_owned(), Some(json!({"y": 2})))]
    );
    assert!(outcome.rejections.is_empty());
}

#[test]
fn a_broken_document_is_rejected_alone_and_cleared_when_fixed() {
    let mut documents = Documents::default();
    documents.apply(update(true, &[("a.json", Some("{}")), ("b.toml", Some("v = 1"))]), |_| false);

    let outcome = documents.apply(update(false, &[("b.toml", Some("v = \n"))]), |_| true);
    assert!(changed(&outcome).is_empty(), "nothing to publish: {:?}", changed(&outcome));
    assert_eq!(outcome.rejections.len(), 1);
    assert_eq!(outcome.rejections[0].line, Some(1));
    assert!(outcome.rejections[0].serving_previous);
    assert!(reasons(&outcome)[0].starts_with("b.toml:1: "), "{:?}", reasons(&outcome));

    let outcome = documents.apply(update(false, &[("b.toml", Some("v = 2"))]), |_| true);
    assert_eq!(changed(&outcome), [("b".to_owned(), Some(json!({"v": 2})))]);
    assert!(outcome.rejections.is_empty());
}

#[test]
fn deleting_a_document_deletes_its_module_and_its_rejection() {
    let mut documents = Documents::default();
    documents.apply(update(true, &[("a.json", Some("{}")), ("b.json", Some("nope"))]), |_| false);
    let outcome = documents.apply(update(false, &[("a.json", None), ("b.json", None)]), |_| true);
    assert_eq!(changed(&outcome), [("a".to_owned(), None), ("b".to_owned(), None)]);
    assert!(outcome.rejections.is_empty());
}

#[test]
fn a_full_update_drops_what_it_does_not_list() {
    let mut documents = Documents::default();
    documents.apply(update(true, &[("a.json", Some("{}")), ("b.json", Some("{}"))]), |_| false);
    let outcome = documents.apply(update(true, &[("b.json", Some("{}"))]), |_| true);
    assert_eq!(changed(&outcome), [("a".to_owned(), None), ("b".to_owned(), Some(json!({})))]);
}

#[test]
fn two_documents_for_one_key_conflict_until_one_goes() {
    let mut documents = Documents::default();
    let outcome = documents.apply(update(true, &[("a.json", Some("{}")), ("a.yaml", Some("x: 1"))]), |_| false);
    assert!(changed(&outcome).is_empty());
    assert_eq!(
        reasons(&outcome),
        ["a.json: key a is defined by both a.json and a.yaml", "a.yaml: key a is defined by both a.json and a.yaml"]
    );
    let outcome = documents.apply(update(false, &[("a.json", None)]), |_| false);
    assert_eq!(changed(&outcome), [("a".to_owned(), Some(json!({"x": 1})))]);
    assert!(outcome.rejections.is_empty());
}

#[test]
fn bad_names_and_refused_documents_are_reported() {
    let mut documents = Documents::default();
    let mut first = update(true, &[("has space.json", Some("{}"))]);
    first.changes.insert("big.json".to_owned(), Some(Err("file is 99 bytes, over the limit of 10".to_owned())));
    let outcome = documents.apply(first, |_| false);
    assert!(changed(&outcome).is_empty());
    assert_eq!(
        reasons(&outcome),
        [
            "big.json: file is 99 bytes, over the limit of 10",
            "has space.json: file name is not a valid key: key has the character ' '; allowed are A-Z a-z 0-9 _ . - and '/' between segments"
        ]
    );
    let outcome = documents.apply(update(false, &[("has space.json", None)]), |_| false);
    assert_eq!(outcome.rejections.len(), 1);
}

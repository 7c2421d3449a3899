use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::{
    model::Key,
    source::{Document, Update},
};

fn update(full: bool, items: &[(&str, Option<&str>)]) -> Update {
    Update {
        full,
        upstream_revision: None,
        epoch: None,
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

fn pipeline() -> Pipeline {
    Pipeline::new(Default::default())
}

const NOTHING_SERVED: &dyn Fn(&Key) -> bool = &|_| false;
const ALL_SERVED: &dyn Fn(&Key) -> bool = &|_| true;

#[test]
fn documents_become_modules() {
    let mut pipeline = pipeline();
    let outcome = pipeline.apply(
        update(true, &[("a.json", Some(r#"{"x": 1}"#)), ("dir/b.yaml", Some("y: 2")), ("README.md", Some("hi"))]),
        NOTHING_SERVED,
    );
    assert_eq!(
        changed(&outcome),
        [("a".to_owned(), Some(json!({"x": 1}))), ("dir/b".to_owned(), Some(json!({"y": 2})))]
    );
    assert!(outcome.rejections.is_empty());
    assert!(outcome.modules.is_some());
}

#[test]
fn a_broken_document_is_rejected_alone_and_cleared_when_fixed() {
    let mut pipeline = pipeline();
    pipeline.apply(update(true, &[("a.json", Some("{}")), ("b.toml", Some("v = 1"))]), NOTHING_SERVED);

    let outcome = pipeline.apply(update(false, &[("b.toml", Some("v = \n"))]), ALL_SERVED);
    assert!(changed(&outcome).is_empty(), "nothing to publish: {:?}", changed(&outcome));
    assert!(outcome.modules.is_none(), "no accepted document changed");
    assert_eq!(outcome.rejections.len(), 1);
    assert_eq!(outcome.rejections[0].line, Some(1));
    assert!(outcome.rejections[0].serving_previous);
    assert!(reasons(&outcome)[0].starts_with("b.toml:1: "), "{:?}", reasons(&outcome));

    let outcome = pipeline.apply(update(false, &[("b.toml", Some("v = 2"))]), ALL_SERVED);
    assert_eq!(changed(&outcome), [("b".to_owned(), Some(json!({"v": 2})))]);
    assert!(outcome.rejections.is_empty());
}

#[test]
fn an_unchanged_document_changes_nothing() {
    let mut pipeline = pipeline();
    pipeline.apply(update(true, &[("a.json", Some(r#"{"x": 1}"#))]), NOTHING_SERVED);
    let outcome = pipeline.apply(update(false, &[("a.json", Some("{\n  \"x\": 1\n}\n"))]), ALL_SERVED);
    assert!(changed(&outcome).is_empty());
    assert!(outcome.modules.is_none(), "the same value in other text is no new revision");
}

#[test]
fn deleting_a_document_deletes_its_module_and_its_rejection() {
    let mut pipeline = pipeline();
    pipeline.apply(update(true, &[("a.json", Some("{}")), ("b.json", Some("nope"))]), NOTHING_SERVED);
    let outcome = pipeline.apply(update(false, &[("a.json", None), ("b.json", None)]), ALL_SERVED);
    assert_eq!(changed(&outcome), [("a".to_owned(), None)]);
    assert!(outcome.rejections.is_empty());
}

#[test]
fn a_full_update_drops_what_it_does_not_list() {
    let mut pipeline = pipeline();
    pipeline.apply(update(true, &[("a.json", Some("{}")), ("b.json", Some("{}"))]), NOTHING_SERVED);
    let outcome = pipeline.apply(update(true, &[("b.json", Some("{}"))]), ALL_SERVED);
    assert_eq!(changed(&outcome), [("a".to_owned(), None)]);
}

#[test]
fn two_documents_for_one_module_conflict_until_one_goes() {
    let mut pipeline = pipeline();
    let outcome = pipeline.apply(update(true, &[("a.json", Some("{}")), ("a.yaml", Some("x: 1"))]), NOTHING_SERVED);
    assert!(changed(&outcome).is_empty());
    assert_eq!(
        reasons(&outcome),
        [
            "a.json: module a is defined by both a.json and a.yaml",
            "a.yaml: module a is defined by both a.json and a.yaml"
        ]
    );
    let outcome = pipeline.apply(update(false, &[("a.json", None)]), NOTHING_SERVED);
    assert_eq!(changed(&outcome), [("a".to_owned(), Some(json!({"x": 1})))]);
    assert!(outcome.rejections.is_empty());
}

#[test]
fn bad_names_and_refused_documents_are_reported() {
    let mut pipeline = pipeline();
    let mut first = update(true, &[("has space.json", Some("{}")), ("m@region.json", Some("{}"))]);
    let refused: Document = Err("file is 99 bytes, over the limit of 10".to_owned());
    first.changes.insert("big.json".to_owned(), Some(refused));
    let outcome = pipeline.apply(first, NOTHING_SERVED);
    assert!(changed(&outcome).is_empty());
    assert_eq!(
        reasons(&outcome),
        [
            "big.json: file is 99 bytes, over the limit of 10",
            "has space.json: file name is not a valid module name: key has the character ' '; allowed are A-Z a-z 0-9 _ . - and '/' between segments",
            "m@region.json: file name is not a valid module name: overlay label \"region\" is not NAME=VALUE with A-Z a-z 0-9 _ . - only",
        ]
    );
    let outcome = pipeline.apply(update(false, &[("has space.json", None)]), NOTHING_SERVED);
    assert_eq!(outcome.rejections.len(), 2);
}

#[test]
fn resolution_failures_name_the_module_file_and_keep_the_previous_value() {
    let mut pipeline = pipeline();
    pipeline.apply(
        update(true, &[("base.yaml", Some("v: 1\n")), ("a.json", Some(r#"{"$extends": ["base"]}"#))]),
        NOTHING_SERVED,
    );
    let outcome = pipeline.apply(update(false, &[("base.yaml", Some("$extends: [a]\nv: 2\n"))]), ALL_SERVED);
    assert!(changed(&outcome).is_empty(), "{:?}", changed(&outcome));
    assert_eq!(reasons(&outcome), ["a.json: cycle: a → base → a", "base.yaml: cycle: a → base → a"]);
    assert!(outcome.rejections.iter().all(|rejection| rejection.serving_previous));

    let outcome = pipeline.apply(update(false, &[("base.yaml", Some("v: 3\n"))]), ALL_SERVED);
    assert_eq!(
        changed(&outcome),
        [("a".to_owned(), Some(json!({"v": 3}))), ("base".to_owned(), Some(json!({"v": 3})))]
    );
    assert!(outcome.rejections.is_empty());
}

#[test]
fn overlays_follow_the_instance_labels() {
    let mut pipeline = Pipeline::new([("region".to_owned(), "eu".to_owned())].into());
    let outcome = pipeline.apply(
        update(
            true,
            &[
                ("mm.yaml", Some("wait: 60\n")),
                ("mm@region=eu.yaml", Some("wait: 30\n")),
                ("mm@region=us.yaml", Some("wait: 1\n")),
            ],
        ),
        NOTHING_SERVED,
    );
    assert_eq!(changed(&outcome), [("mm".to_owned(), Some(json!({"wait": 30})))]);
    let outcome = pipeline.apply(update(false, &[("mm@region=us.yaml", Some("wait: 2\n"))]), ALL_SERVED);
    // Resolved again to the same value, which the store does not publish as a change.
    assert_eq!(changed(&outcome), [("mm".to_owned(), Some(json!({"wait": 30})))]);
    assert!(outcome.modules.is_some(), "but it is a new revision of the documents");
}

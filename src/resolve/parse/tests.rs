use serde_json::json;

use super::*;

fn check(name: &str, text: &str, expected: Result<Value, (Option<u32>, &str)>) {
    let format = Format::from_name(name).expect("test names carry a suffix");
    let actual = parse_document(format, text.as_bytes());
    match (actual, expected) {
        (Ok(value), Ok(expected)) => assert_eq!(value, expected, "{name}"),
        (Err(error), Err((line, reason))) => {
            assert_eq!(error.line, line, "{name}: line of {error:?}");
            assert!(error.reason.contains(reason), "{name}: {:?} lacks {reason:?}", error.reason);
        }
        (actual, expected) => panic!("{name}: got {actual:?}, expected {expected:?}"),
    }
}

#[test]
fn formats() {
    check("a.json", r#"{"a": [1, 2.5, "x", null, true]}"#, Ok(json!({"a": [1, 2.5, "x", null, true]})));
    check("a.yaml", "a:\n  b: 1\n  c: [x, y]\n", Ok(json!({"a": {"b": 1, "c": ["x", "y"]}})));
    check("a.yml", "a: true\n", Ok(json!({"a": true})));
    check("a.toml", "a = 1\n[b]\nc = \"x\"\n", Ok(json!({"a": 1, "b": {"c": "x"}})));
}

#[test]
fn errors_name_the_line() {
    check("a.json", "{\n  \"a\": 1,\n  \"b\" 2\n}", Err((Some(3), "expected `:`")));
    check("a.yaml", "a: 1\nb: [\n", Err((Some(3), "")));
    check("a.toml", "a = 1\nb = = 2\n", Err((Some(2), "")));
    check("a.json", "", Err((None, "document is empty")));
    check("a.yaml", "  \n\n", Err((None, "document is empty")));
    check("a.json", "[1, 2]", Err((Some(1), "top level must be a map, found a list")));
    check("a.yaml", "just text", Err((Some(1), "found a string")));
}

#[test]
fn non_utf8_is_rejected_with_its_line() {
    let error = parse_document(Format::Json, b"{\n\"a\":\n\"\xff\"}").unwrap_err();
    assert_eq!(error, ParseError::new(Some(3), "text is not valid UTF-8"));
}

#[test]
fn document_modules() {
    let key = |name| document_module(name).map(|module| module.map(|module| module.to_string()));
    assert_eq!(key("matchmaking/queues.yaml"), Some(Ok("matchmaking/queues".to_owned())));
    assert_eq!(key("a.b.toml"), Some(Ok("a.b".to_owned())));
    assert_eq!(key("mm@region=eu.json"), Some(Ok("mm@region=eu".to_owned())));
    assert_eq!(key("README.md"), None);
    assert_eq!(key("noext"), None);
    assert!(matches!(key("bad name.json"), Some(Err(NameError::Key(crate::model::KeyError::BadCharacter(' '))))));
}

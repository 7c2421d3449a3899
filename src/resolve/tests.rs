//! Data-driven resolver tests: modules in, resolved values or diagnostics out.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::model::Key;

fn name(text: &str) -> ModuleName {
    parse_module_name(text).expect("test module names are valid")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
}

fn resolver_with(labels: Labels, modules: &[(&str, Value)]) -> Resolver {
    let mut resolver = Resolver::new(labels);
    resolver.apply(modules.iter().map(|(module, value)| (name(module), Some(Arc::new(value.clone())))));
    resolver
}

/// `Ok(value)` or `Err(text the reason must contain)`.
type Expected<'a> = Result<Value, &'a str>;

fn check_with(labels: Labels, modules: &[(&str, Value)], expected: &[(&str, Expected<'_>)]) {
    let resolver = resolver_with(labels, modules);
    for (key, expected) in expected {
        let outcome = resolver.outcome(&Key::new(key).expect("valid key"));
        match (outcome, expected) {
            (Some(Ok(value)), Ok(expected)) => assert_eq!(&**value, expected, "{key}"),
            (Some(Err(reason)), Err(expected)) => {
                assert!(reason.contains(expected), "{key}: {reason:?} should contain {expected:?}")
            }
            (outcome, expected) => panic!("{key}: got {outcome:?}, expected {expected:?}"),
        }
    }
}

fn check(modules: &[(&str, Value)], expected: &[(&str, Expected<'_>)]) {
    check_with(Labels::new(), modules, expected);
}

#[test]
fn extends_merges_bases_underneath() {
    check(
        &[
            ("base/a", json!({"x": 1, "nested": {"a": 1, "b": 1}, "list": [1, 2]})),
            ("base/b", json!({"x": 2, "nested": {"b": 2}, "only_b": true})),
            ("m", json!({"$extends": ["base/a", "base/b"], "nested": {"c": 3}, "list": [9]})),
            ("single", json!({"$extends": "base/a", "x": 5})),
        ],
        &[
            ("m", Ok(json!({"x": 2, "nested": {"a": 1, "b": 2, "c": 3}, "list": [9], "only_b": true}))),
            ("single", Ok(json!({"x": 5, "nested": {"a": 1, "b": 1}, "list": [1, 2]}))),
        ],
    );
}

#[test]
fn extends_chains_resolve_bases_first() {
    check(
        &[
            ("c", json!({"level": "c", "from_c": 1})),
            ("b", json!({"$extends": ["c"], "level": "b", "from_b": 1})),
            ("a", json!({"$extends": ["b"], "level": "a"})),
        ],
        &[("a", Ok(json!({"level": "a", "from_b": 1, "from_c": 1})))],
    );
}

#[test]
fn references_take_the_type_or_interpolate_scalars() {
    check(
        &[
            ("items", json!({"sword": {"damage": 40, "rare": false}, "names": ["a", "b"], "tag": "x"})),
            (
                "loot",
                json!({
                    "whole": "${items#/sword}",
                    "number": "${items#/sword/damage}",
                    "list": "${items#/names}",
                    "module": "${items}",
                    "text": "dmg=${items#/sword/damage} rare=${items#/sword/rare} tag=${items#/tag}",
                    "escaped": "$${items#/tag} costs $5",
                    "deep": [{"ref": "${items#/names/1}"}],
                }),
            ),
        ],
        &[(
            "loot",
            Ok(json!({
                "whole": {"damage": 40, "rare": false},
                "number": 40,
                "list": ["a", "b"],
                "module": {"sword": {"damage": 40, "rare": false}, "names": ["a", "b"], "tag": "x"},
                "text": "dmg=40 rare=false tag=x",
                "escaped": "${items#/tag} costs $5",
                "deep": [{"ref": "b"}],
            })),
        )],
    );
}

#[test]
fn references_see_resolved_values() {
    check(
        &[
            ("base", json!({"rate": 30})),
            ("server", json!({"$extends": ["base"]})),
            ("client", json!({"tick": "${server#/rate}"})),
        ],
        &[("client", Ok(json!({"tick": 30})))],
    );
}

#[test]
fn overlays_apply_when_every_label_matches_most_specific_last() {
    let modules = [
        ("mm", json!({"wait": 60, "size": 4, "mode": "casual"})),
        ("mm@region=eu", json!({"wait": 30, "mode": "eu"})),
        ("mm@mode=ranked", json!({"size": 5, "mode": "ranked"})),
        ("mm@mode=ranked,region=eu", json!({"mode": "eu-ranked"})),
        ("mm@region=us", json!({"wait": 1})),
    ];
    check_with(labels(&[]), &modules, &[("mm", Ok(json!({"wait": 60, "size": 4, "mode": "casual"})))]);
    check_with(labels(&[("region", "eu")]), &modules, &[("mm", Ok(json!({"wait": 30, "size": 4, "mode": "eu"})))]);
    check_with(
        labels(&[("region", "eu"), ("mode", "ranked"), ("build", "1")]),
        &modules,
        &[("mm", Ok(json!({"wait": 30, "size": 5, "mode": "eu-ranked"})))],
    );
}

#[test]
fn overlays_of_the_same_specificity_apply_in_name_order() {
    check_with(
        labels(&[("a", "1"), ("b", "1")]),
        &[("m", json!({"v": 0})), ("m@b=1", json!({"v": "b"})), ("m@a=1", json!({"v": "a"}))],
        &[("m", Ok(json!({"v": "b"})))],
    );
}

#[test]
fn an_overlay_without_its_module_makes_no_module() {
    let resolver = resolver_with(labels(&[("region", "eu")]), &[("lonely@region=eu", json!({"v": 1}))]);
    assert!(resolver.outcome(&Key::new("lonely").expect("valid")).is_none());
}

fn loot_schema() -> Value {
    json!({
        "type": "object",
        "required": ["drops"],
        "properties": {"drops": {"type": "array", "items": {"type": "object", "properties": {"weight": {"type": "integer", "minimum": 0}}}}}
    })
}

#[test]
fn schemas_validate_resolved_values() {
    check(
        &[
            ("schemas/loot", loot_schema()),
            ("ok", json!({"$schema": "schemas/loot", "drops": [{"weight": 3}]})),
            ("bad", json!({"$schema": "schemas/loot", "drops": [{"weight": -1}]})),
            ("missing", json!({"$schema": "schemas/loot"})),
            ("no_such_schema", json!({"$schema": "schemas/nope", "drops": []})),
            ("meta", json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"})),
            ("bad_schema", json!({"type": 12})),
            ("uses_bad_schema", json!({"$schema": "bad_schema"})),
        ],
        &[
            ("ok", Ok(json!({"drops": [{"weight": 3}]}))),
            ("bad", Err("fails schema schemas/loot: at /drops/0/weight: -1 is less than the minimum of 0")),
            ("missing", Err("fails schema schemas/loot: at /: \"drops\" is a required property")),
            ("no_such_schema", Err("$schema schemas/nope: no module schemas/nope")),
            ("meta", Ok(json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}))),
            ("uses_bad_schema", Err("schema bad_schema is not a valid JSON Schema")),
        ],
    );
}

#[test]
fn cycles_reject_their_members_and_dependents_only() {
    check(
        &[
            ("a", json!({"$extends": ["b"]})),
            ("b", json!({"x": "${c#/x}"})),
            ("c", json!({"$extends": ["a"], "x": 1})),
            ("self", json!({"me": "${self#/me}"})),
            ("user", json!({"$extends": ["a"]})),
            ("bystander", json!({"fine": true})),
        ],
        &[
            ("a", Err("cycle: a → b → c → a")),
            ("b", Err("cycle: a → b → c → a")),
            ("c", Err("cycle: a → b → c → a")),
            ("self", Err("cycle: self → self")),
            ("user", Err("depends on a, which is rejected")),
            ("bystander", Ok(json!({"fine": true}))),
        ],
    );
}

#[test]
fn dangling_and_malformed_references_name_the_problem() {
    check(
        &[
            ("items", json!({"sword": {"damage": 40}})),
            ("dangling", json!({"x": "${nope#/a}"})),
            ("no_field", json!({"x": "${items#/shield}"})),
            ("not_scalar", json!({"x": "dmg ${items#/sword}"})),
            ("unclosed", json!({"x": "${items#/sword"})),
            ("bad_key", json!({"x": "${../etc#/a}"})),
            ("bad_pointer", json!({"x": "${items#sword}"})),
            ("bad_extends", json!({"$extends": [1]})),
            ("missing_base", json!({"$extends": ["ghost"]})),
        ],
        &[
            ("dangling", Err("reference ${nope#/a} at /x: no module nope")),
            ("no_field", Err("reference ${items#/shield} at /x: items has nothing at /shield")),
            ("not_scalar", Err("only a scalar can go inside a string, found a map")),
            ("unclosed", Err("unclosed reference")),
            ("bad_key", Err("reference ${../etc#/a}: key has a '..' segment")),
            ("bad_pointer", Err("a pointer starts with '/'")),
            ("bad_extends", Err("$extends must be a key or a list of keys")),
            ("missing_base", Err("$extends ghost: no module ghost")),
        ],
    );
}

#[test]
fn a_change_resolves_only_the_changed_module_and_its_dependents() {
    let mut resolver = resolver_with(
        Labels::new(),
        &[
            ("base", json!({"v": 1})),
            ("mid", json!({"$extends": ["base"]})),
            ("top", json!({"x": "${mid#/v}"})),
            ("other", json!({"o": 1})),
        ],
    );
    let touched = resolver.apply([(name("base"), Some(Arc::new(json!({"v": 2}))))]);
    let keys: Vec<&str> = touched.keys().map(Key::as_str).collect();
    assert_eq!(keys, ["base", "mid", "top"]);
    assert_eq!(
        touched[&Key::new("top").expect("valid")].clone().and_then(Result::ok).as_deref(),
        Some(&json!({"x": 2}))
    );

    // A dangling reference is resolved again when its target appears.
    resolver.apply([(name("later"), Some(Arc::new(json!({"y": "${ghost#/g}"}))))]);
    assert!(matches!(resolver.outcome(&Key::new("later").expect("valid")), Some(Err(_))));
    let touched = resolver.apply([(name("ghost"), Some(Arc::new(json!({"g": 7}))))]);
    assert_eq!(touched.keys().map(Key::as_str).collect::<Vec<_>>(), ["ghost", "later"]);
    assert_eq!(
        resolver.outcome(&Key::new("later").expect("valid")).and_then(|o| o.clone().ok()).as_deref(),
        Some(&json!({"y": 7}))
    );

    // Removing a module reports it gone, and its dependents rejected.
    let touched = resolver.apply([(name("base"), None)]);
    assert_eq!(touched[&Key::new("base").expect("valid")], None);
    assert!(
        matches!(resolver.outcome(&Key::new("mid").expect("valid")), Some(Err(reason)) if reason.contains("no module base"))
    );
}

#[test]
fn on_demand_resolution_under_other_labels_and_explain() {
    let resolver = resolver_with(
        labels(&[("region", "us")]),
        &[
            ("items", json!({"sword": 40})),
            ("base", json!({"a": 1, "b": 1})),
            ("m", json!({"$extends": ["base"], "b": 2, "dmg": "${items#/sword}"})),
            ("m@region=eu", json!({"c": 3})),
        ],
    );
    let eu = labels(&[("region", "eu")]);
    let schemas = SchemaCache::default();
    let mut on_demand = OnDemand::new(resolver.modules(), &eu, &schemas);
    let (value, explanation) = on_demand.explain(&Key::new("m").expect("valid")).expect("exists").expect("resolves");
    assert_eq!(*value, json!({"a": 1, "b": 2, "c": 3, "dmg": 40}));
    assert_eq!(explanation.layers, ["extends base", "m", "m@region=eu"]);
    let fields: Vec<(&str, &str)> = explanation.fields.iter().map(|(f, l)| (f.as_str(), l.as_str())).collect();
    assert_eq!(fields, [("a", "extends base"), ("b", "m"), ("c", "m@region=eu"), ("dmg", "m")]);
    assert_eq!(explanation.references, [("/dmg".to_owned(), "${items#/sword}".to_owned())]);
    assert!(on_demand.resolve(&Key::new("nope").expect("valid")).is_none());

    let cyclic = resolver_with(Labels::new(), &[("a", json!({"x": "${b#/x}"})), ("b", json!({"x": "${a#/x}"}))]);
    let none = Labels::new();
    let mut on_demand = OnDemand::new(cyclic.modules(), &none, &schemas);
    let failure = on_demand.resolve(&Key::new("a").expect("valid")).expect("exists").expect_err("cycle");
    assert_eq!(failure, "cycle: a → b → a");
}

#[test]
fn module_names() {
    let overlay = parse_module_name("mm/queues@region=eu,mode=ranked").expect("valid");
    assert_eq!(overlay.key.as_str(), "mm/queues");
    assert_eq!(overlay.to_string(), "mm/queues@mode=ranked,region=eu");
    assert!(overlay.applies_to(&labels(&[("region", "eu"), ("mode", "ranked"), ("x", "y")])));
    assert!(!overlay.applies_to(&labels(&[("region", "eu")])));
    assert!(matches!(parse_module_name("m@region"), Err(NameError::Label(_))));
    assert!(matches!(parse_module_name("m@"), Err(NameError::Label(_))));
    assert!(matches!(parse_module_name("m@a=1,a=2"), Err(NameError::DuplicateLabel(_))));
    assert!(matches!(parse_module_name("m@a=b c"), Err(NameError::Label(_))));
}

/// A random module: maybe extends some of the earlier-or-later keys, references others,
/// has a schema, and carries a few fields.
fn arb_module(n_keys: usize) -> impl Strategy<Value = Option<Value>> {
    let key = 0..n_keys;
    (proptest::option::weighted(
        0.9,
        (
            proptest::collection::vec(key.clone(), 0..3),
            proptest::collection::vec(key, 0..3),
            0..4u8,
            0..50i64,
            proptest::bool::weighted(0.2),
        ),
    ),)
        .prop_map(|(module,)| {
            module.map(|(extends, references, field, number, with_schema)| {
                let mut value = json!({ format!("f{field}"): number, "n": number });
                let object = value.as_object_mut().expect("an object");
                if !extends.is_empty() {
                    object
                        .insert("$extends".into(), json!(extends.iter().map(|k| format!("k{k}")).collect::<Vec<_>>()));
                }
                for (n, key) in references.iter().enumerate() {
                    object.insert(format!("r{n}"), json!(format!("${{k{key}#/n}}")));
                }
                if with_schema {
                    object.insert("$schema".into(), json!("schema"));
                }
                value
            })
        })
}

fn outcomes(resolver: &Resolver, n_keys: usize) -> Vec<Option<Outcome>> {
    (0..n_keys).map(|k| resolver.outcome(&Key::new(&format!("k{k}")).expect("valid")).cloned()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Incremental resolution after any sequence of changes equals resolving the final
    /// documents from scratch, and no resolved value fails its schema.
    #[test]
    fn incremental_equals_from_scratch(
        steps in proptest::collection::vec(proptest::collection::vec((0..12usize, arb_module(12)), 1..4), 1..8)
    ) {
        const N: usize = 12;
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "maximum": 40}}});
        let schema_name = name("schema");
        let mut incremental = Resolver::new(Labels::new());
        incremental.apply([(schema_name.clone(), Some(Arc::new(schema.clone())))]);
        let mut documents = std::collections::BTreeMap::new();
        for step in steps {
            let changes: Vec<(ModuleName, Option<Arc<Value>>)> =
                step.into_iter().map(|(k, module)| (name(&format!("k{k}")), module.map(Arc::new))).collect();
            for (module, value) in &changes {
                documents.insert(module.clone(), value.clone());
            }
            incremental.apply(changes);
        }
        let mut scratch = Resolver::new(Labels::new());
        scratch.apply(std::iter::once((schema_name, Some(Arc::new(schema.clone())))).chain(documents));
        prop_assert_eq!(outcomes(&incremental, N), outcomes(&scratch, N));
        let validator = jsonschema::validator_for(&schema).expect("valid schema");
        for k in 0..N {
            let key = Key::new(&format!("k{k}")).expect("valid");
            let declares_schema = incremental.modules().get(&key).and_then(|docs| docs.base.clone()).is_some_and(|doc| doc.get("$schema").is_some());
            if let (true, Some(Ok(value))) = (declares_schema, incremental.outcome(&key)) {
                prop_assert!(validator.is_valid(value), "k{} published {} which fails its schema", k, value);
            }
        }
    }
}

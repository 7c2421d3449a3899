use proptest::prelude::*;

use super::*;

#[test]
fn keys() {
    let cases: &[(&str, Result<(), KeyError>)] = &[
        ("matchmaking/queues", Ok(())),
        ("a", Ok(())),
        ("loot/tables/chest_common.v2", Ok(())),
        ("", Err(KeyError::Empty)),
        ("/abs", Err(KeyError::LeadingSlash)),
        ("dir/", Err(KeyError::TrailingSlash)),
        ("a//b", Err(KeyError::EmptySegment)),
        ("a/../b", Err(KeyError::DotSegment(".."))),
        ("..", Err(KeyError::DotSegment(".."))),
        ("./a", Err(KeyError::DotSegment("."))),
        ("a b", Err(KeyError::BadCharacter(' '))),
        ("a\\b", Err(KeyError::BadCharacter('\\'))),
        ("é", Err(KeyError::BadCharacter('é'))),
    ];
    for (text, expected) in cases {
        assert_eq!(&Key::new(text).map(|_| ()), expected, "key {text:?}");
    }
    let long = "a".repeat(MAX_KEY_LEN + 1);
    assert_eq!(Key::new(&long).map(|_| ()), Err(KeyError::TooLong(513)));
    assert!(Key::new(&"a".repeat(MAX_KEY_LEN)).is_ok());
    assert_eq!(Key::from_utf8(b"a\xffb").map(|_| ()), Err(KeyError::NotUtf8));
}

#[test]
fn prefixes() {
    for ok in ["", "matchmaking/", "matchmaking", "match", "loot/tables/"] {
        assert_eq!(validate_prefix(ok), Ok(()), "prefix {ok:?}");
    }
    assert_eq!(validate_prefix("/"), Err(KeyError::Empty));
    assert_eq!(validate_prefix("a//"), Err(KeyError::EmptySegment));
    assert_eq!(validate_prefix("../"), Err(KeyError::DotSegment("..")));
    assert_eq!(validate_prefix("a*"), Err(KeyError::BadCharacter('*')));
}

proptest! {
    /// The one-pass check that valid keys take agrees with the checks that explain errors.
    #[test]
    fn plain_path_check_agrees_with_the_errors(text in "[a./_é-]{0,12}") {
        prop_assert_eq!(is_plain_path(&text), path_error(&text, PathKind::Key).is_ok());
    }
}

//! MQTT topic names and topic filters: validation and matching (MQTT 3.1.1 §4.7), shared by the
//! registry, the subscription table and the engine. Pure functions on `&str`, no allocation.

use thiserror::Error;

/// The longest topic name or filter MQTT can carry (its length field is 16 bits).
pub const MAX_TOPIC_LEN: usize = 65535;

/// What is wrong with a topic name or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    /// The topic is the empty string.
    #[error("topic is empty")]
    Empty,
    /// The topic is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// The topic contains U+0000, which MQTT forbids.
    #[error("topic contains a NUL character")]
    Nul,
    /// A topic name (as published to) contains `+` or `#`.
    #[error("topic name contains a wildcard (+ or #)")]
    WildcardInName,
    /// `#` is not the whole last level of a filter.
    #[error("'#' must be the last level of a filter and alone in its level")]
    MisplacedMultiLevel,
    /// `+` shares its level with other characters.
    #[error("'+' must be alone in its level")]
    MisplacedSingleLevel,
}

/// The checks names and filters share.
fn validate_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        Err(TopicError::Empty)
    } else if topic.len() > MAX_TOPIC_LEN {
        Err(TopicError::TooLong)
    } else if topic.as_bytes().contains(&0) {
        Err(TopicError::Nul)
    } else {
        Ok(())
    }
}

/// Checks a topic name that messages are published to: non-empty, at most 65535 bytes, no NUL,
/// no wildcard characters.
///
/// # Errors
/// The first [`TopicError`] found.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    validate_common(name)?;
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter that clients subscribe to: as a name, except that `+` may stand alone
/// in any level and `#` alone in the last level.
///
/// # Errors
/// The first [`TopicError`] found.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    validate_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevel);
        }
    }
    Ok(())
}

/// Whether `filter` contains a wildcard, so that it stands for more than one topic name.
pub fn is_wildcard(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// Whether the topic name `name` matches the topic filter `filter` (MQTT 3.1.1 §4.7): `+` matches
/// exactly one level (which may be empty), `#` matches any number of trailing levels including
/// none (`a/#` matches `a`), and a name starting with `$` is not matched by a filter whose first
/// level is a wildcard (§4.7.2: `#` does not see `$SYS/...`).
///
/// Both arguments are expected to be valid; for invalid ones the result is unspecified (but
/// this never panics).
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            // `#` swallows the rest, and also matches when the name has no more levels (parent).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::Nul));
        assert_eq!(validate_topic_name(&"x".repeat(65535)), Ok(()));
        assert_eq!(
            validate_topic_name(&"x".repeat(65536)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn filters() {
        for ok in [
            "#", "+", "a/#", "a/+/c", "+/+", "/#", "a//b", "+/", "$SYS/#",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter("a\0"), Err(TopicError::Nul));
        for bad in ["a/#/b", "#/", "a#", "a/b#", "##"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MisplacedMultiLevel),
                "{bad}"
            );
        }
        for bad in ["a+", "a/+b", "++"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::MisplacedSingleLevel),
                "{bad}"
            );
        }
        assert_eq!(
            validate_topic_filter(&"+".repeat(65536)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn wildcards() {
        assert!(is_wildcard("#"));
        assert!(is_wildcard("a/+/b"));
        assert!(!is_wildcard("a/b"));
        assert!(!is_wildcard("$SYS"));
    }

    #[test]
    fn matching() {
        let yes = [
            ("a/b", "a/b"),
            ("a/+/c", "a/b/c"),
            ("a/+/c", "a//c"),
            ("+", ""),
            ("+/+", "/"),
            ("/+", "/"),
            ("#", "a/b/c"),
            ("#", "/"),
            ("a/#", "a"),
            ("a/#", "a/"),
            ("a/#", "a/b/c"),
            ("sport/tennis/#", "sport/tennis"),
            ("sport/tennis/#", "sport/tennis/player1/ranking"),
            ("sport/+", "sport/"),
            ("$SYS/#", "$SYS/x"),
            ("$SYS/#", "$SYS"),
            ("$SYS/+", "$SYS/x"),
            ("a/$x", "a/$x"),
            ("+/$x", "a/$x"),
        ];
        for (f, n) in yes {
            assert!(matches(f, n), "{f} should match {n}");
        }
        let no = [
            ("a/b", "a/b/c"),
            ("a/b/c", "a/b"),
            ("a/+/c", "a/c"),
            ("+", "/"),
            ("+", "a/b"),
            ("sport/+", "sport"),
            ("a/#", "ab"),
            ("a/b", "A/b"),
            ("#", "$SYS/x"),
            ("#", "$SYS"),
            ("+/x", "$SYS/x"),
            ("+", "$"),
            ("a/b/", "a/b"),
        ];
        for (f, n) in no {
            assert!(!matches(f, n), "{f} should not match {n}");
        }
    }

    /// A deliberately different reference: levels collected into vectors, matched recursively.
    fn reference(filter: &str, name: &str) -> bool {
        fn go(f: &[&str], n: &[&str]) -> bool {
            match (f.first(), n.first()) {
                (Some(&"#"), _) => true,
                (Some(&"+"), Some(_)) => go(&f[1..], &n[1..]),
                (Some(a), Some(b)) => a == b && go(&f[1..], &n[1..]),
                (None, None) => true,
                _ => false,
            }
        }
        let f: Vec<&str> = filter.split('/').collect();
        let n: Vec<&str> = name.split('/').collect();
        if n[0].starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        go(&f, &n)
    }

    fn level(wild: bool) -> BoxedStrategy<String> {
        let mut choices = vec!["a", "b", "", "$x", "$"];
        if wild {
            choices.push("+");
        }
        proptest::sample::select(choices)
            .prop_map(str::to_owned)
            .boxed()
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(false), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (proptest::collection::vec(level(true), 0..5), any::<bool>()).prop_map(
            |(mut levels, hash)| {
                // Empty (or a lone empty level) would be invalid; `#` stands in.
                if hash || levels.concat().is_empty() && levels.len() < 2 {
                    levels.push("#".to_owned());
                }
                levels.join("/")
            },
        )
    }

    proptest! {
        #[test]
        fn matches_agrees_with_reference(f in filter(), n in name()) {
            prop_assert_eq!(validate_topic_filter(&f), Ok(()));
            prop_assert_eq!(matches(&f, &n), reference(&f, &n), "filter {:?} name {:?}", f, n);
        }

        #[test]
        fn names_match_themselves(n in name()) {
            prop_assume!(!n.is_empty());
            prop_assert!(matches(&n, &n));
        }
    }
}

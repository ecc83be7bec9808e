//! Topic access rules in Mosquitto's `acl_file` format, so that operators reuse what they know
//! (issue 12): which topics a device may publish to and which filters it may subscribe to.
//!
//! The format, line by line (`#` starts a comment):
//! - `user NAME`: the `topic` lines that follow apply to devices with that username;
//! - `topic [read|write|readwrite|deny] TOPIC`: a rule for the current user (before any `user`
//!   line: for devices without a username); the access is `readwrite` when left out;
//! - `pattern [read|write|readwrite|deny] TOPIC`: a rule for every device, where `%c` stands for
//!   its ClientId and `%u` for its username.
//!
//! A device may do what one of its rules allows and none denies. A subscription is allowed
//! only if the filter is no wider than a rule's (`sensors/+` under `sensors/#`, not `#` under
//! `sensors/#`); a `deny` rule refuses a subscription that overlaps it at all.
//!
//! A ClientId or username that is empty, starts with `$` or holds `+`, `#` or `/` gets no
//! pattern rules naming it: put into a rule, it would widen it, reach into another device's
//! topics or into a `$` tree.

use std::borrow::Cow;

use thiserror::Error;

use super::topic;
use crate::hash::{HashMap, HashSeed};

/// What a rule grants (or takes away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribe (receive).
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, whatever other rules say.
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// A line of the file that is not a rule this format has.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {reason}")]
pub struct AclError {
    /// Its line number (from 1).
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    /// A topic filter (for patterns: before `%c`/`%u` are put in).
    filter: String,
}

/// The rules of an `acl_file`.
#[derive(Debug, Clone)]
pub struct Acl {
    /// Rules for devices without a username.
    anonymous: Vec<Rule>,
    /// Rules per username.
    users: HashMap<String, Vec<Rule>>,
    /// Rules for everyone, with `%c` and `%u`.
    patterns: Vec<Rule>,
}

impl Acl {
    /// Reads the rules from the text of an `acl_file`.
    ///
    /// # Errors
    /// [`AclError`] naming the first line that is not a rule of the format, or whose topic is
    /// not a valid topic filter.
    pub fn parse(text: &str, seed: HashSeed) -> Result<Acl, AclError> {
        let mut acl = Acl {
            anonymous: Vec::new(),
            users: HashMap::with_hasher(seed),
            patterns: Vec::new(),
        };
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let error = |reason: String| AclError { line, reason };
            // Only a whole line is a comment: inside a topic `#` is the wildcard (as in
            // Mosquitto, which has no comments after a rule).
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (keyword, rest) = content
                .split_once(char::is_whitespace)
                .map_or((content, ""), |(k, r)| (k, r.trim()));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` needs a name".into()));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let (access, filter) = match rest
                        .split_once(char::is_whitespace)
                        .and_then(|(word, filter)| Some((access_word(word)?, filter.trim())))
                    {
                        Some(rule) => rule,
                        None => (Access::ReadWrite, rest),
                    };
                    if filter.is_empty() || access_word(filter).is_some() {
                        return Err(error(format!("`{keyword}` needs a topic")));
                    }
                    let probe = filter.replace("%c", "c").replace("%u", "u");
                    topic::validate_topic_filter(&probe)
                        .map_err(|e| error(format!("{filter:?}: {e}")))?;
                    let rule = Rule {
                        access,
                        filter: filter.to_owned(),
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(name)) => acl.users.entry(name.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword {other:?}; expected user, topic or pattern"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// The rules that apply to a device, patterns filled in (only those with a placeholder
    /// are copied: this runs for every message delivered while an ACL is in force).
    fn rules_for<'a>(
        &'a self,
        client_id: &'a str,
        username: Option<&'a str>,
    ) -> impl Iterator<Item = (Access, Cow<'a, str>)> + 'a {
        let own = match username {
            Some(name) => self.users.get(name).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous[..],
        };
        // A name that would change a rule's shape fills in no pattern: wildcards, levels, a
        // `$` that would turn `%c/#` into a system tree, or nothing at all (a sender without
        // a session has no ClientId).
        let usable = |name: Option<&str>| {
            name.is_some_and(|n| {
                !n.is_empty() && !n.starts_with('$') && !n.contains(['+', '#', '/'])
            })
        };
        let patterns = self.patterns.iter().filter_map(move |rule| {
            let (c, u) = (rule.filter.contains("%c"), rule.filter.contains("%u"));
            // A pattern naming the username says nothing about a device without one.
            if (u && !usable(username)) || (c && !usable(Some(client_id))) {
                return None;
            }
            let filter = if c || u {
                Cow::Owned(
                    rule.filter
                        .replace("%c", client_id)
                        .replace("%u", username.unwrap_or("")),
                )
            } else {
                Cow::Borrowed(rule.filter.as_str())
            };
            Some((rule.access, filter))
        });
        own.iter()
            .map(|r| (r.access, Cow::Borrowed(r.filter.as_str())))
            .chain(patterns)
    }

    /// Whether a rule granting `grants` covers the request (`covers`) and no deny rule touches
    /// it (`touches`).
    fn decide(
        &self,
        client_id: &str,
        username: Option<&str>,
        grants: fn(Access) -> bool,
        covers: impl Fn(&str) -> bool,
        touches: impl Fn(&str) -> bool,
    ) -> bool {
        let mut allowed = false;
        for (access, filter) in self.rules_for(client_id, username) {
            if access == Access::Deny {
                if touches(&filter) {
                    return false;
                }
            } else if !allowed && grants(access) && covers(&filter) {
                allowed = true;
            }
        }
        allowed
    }

    /// Whether the device may publish to the topic name `topic`.
    pub fn may_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        let matches = |rule: &str| topic::matches(rule, topic);
        self.decide(client_id, username, Access::writes, matches, matches)
    }

    /// Whether the device may receive a message published to the topic name `topic`.
    pub fn may_receive(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        let matches = |rule: &str| topic::matches(rule, topic);
        self.decide(client_id, username, Access::reads, matches, matches)
    }

    /// Whether the device may subscribe to `filter`: a rule must allow all of it, and no deny
    /// rule may cover any topic it would receive.
    pub fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        self.decide(
            client_id,
            username,
            Access::reads,
            |rule| within(filter, rule),
            |rule| overlaps(rule, filter),
        )
    }
}

fn access_word(word: &str) -> Option<Access> {
    match word {
        "read" => Some(Access::Read),
        "write" => Some(Access::Write),
        "readwrite" => Some(Access::ReadWrite),
        "deny" => Some(Access::Deny),
        _ => None,
    }
}

/// Whether every topic `filter` matches is matched by `rule` (the filter is no wider).
fn within(filter: &str, rule: &str) -> bool {
    // §4.7.2: a rule starting with a wildcard does not cover `$` topics.
    if filter.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut r = rule.split('/');
    loop {
        match (f.next(), r.next()) {
            (_, Some("#")) => return true,
            (Some("#"), _) => return false,
            (Some(_), Some("+")) => {}
            (Some("+"), Some(_)) => return false,
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic name is matched by both filters.
fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# devices without a username may only read the time
topic read time/#

user sensor-a
topic write sensors/a/#
topic read cmd/a
topic deny sensors/a/secret

user admin
topic readwrite #

# every device its own space
pattern readwrite devices/%c/#
pattern write users/%u/status
";

    fn acl() -> Acl {
        Acl::parse(FILE, HashSeed(1, 2)).unwrap()
    }

    #[test]
    fn publishing_follows_the_rules_of_the_user_and_the_patterns() {
        let acl = acl();
        assert!(acl.may_publish("c1", Some("sensor-a"), "sensors/a/temp"));
        assert!(!acl.may_publish("c1", Some("sensor-a"), "sensors/b/temp"));
        assert!(
            !acl.may_publish("c1", Some("sensor-a"), "sensors/a/secret"),
            "deny wins"
        );
        assert!(
            !acl.may_publish("c1", Some("sensor-a"), "cmd/a"),
            "read only"
        );
        assert!(acl.may_publish("c1", Some("sensor-a"), "devices/c1/x"));
        assert!(!acl.may_publish("c1", Some("sensor-a"), "devices/c2/x"));
        assert!(acl.may_publish("c1", Some("sensor-a"), "users/sensor-a/status"));
        assert!(
            !acl.may_publish("c1", None, "users//status"),
            "%u needs a username"
        );
        assert!(
            !acl.may_publish("c9", None, "time/now"),
            "anonymous: read only"
        );
        assert!(acl.may_publish("c9", None, "devices/c9/up"));
        assert!(acl.may_publish("x", Some("admin"), "anything/at/all"));
        assert!(!acl.may_publish("x", Some("nobody"), "anything"));
    }

    #[test]
    fn a_subscription_may_not_be_wider_than_a_rule() {
        let acl = acl();
        assert!(acl.may_subscribe("c1", None, "time/#"));
        assert!(acl.may_subscribe("c1", None, "time/+/zone"));
        assert!(!acl.may_subscribe("c1", None, "#"));
        assert!(!acl.may_subscribe("c1", None, "+/now"));
        assert!(acl.may_subscribe("c1", Some("sensor-a"), "cmd/a"));
        assert!(!acl.may_subscribe("c1", Some("sensor-a"), "cmd/+"));
        assert!(
            !acl.may_subscribe("c1", Some("sensor-a"), "sensors/a/#"),
            "write only"
        );
        assert!(acl.may_subscribe("c1", Some("admin"), "#"));
        assert!(
            !acl.may_subscribe("c1", Some("admin"), "$SYS/#"),
            "# does not cover $SYS"
        );
        assert!(acl.may_subscribe("c1", Some("sensor-a"), "devices/c1/+"));
    }

    #[test]
    fn a_deny_rule_refuses_every_subscription_that_reaches_it() {
        let acl = Acl::parse(
            "user u\ntopic read a/#\ntopic deny a/secret\n",
            HashSeed(1, 2),
        )
        .unwrap();
        assert!(acl.may_subscribe("c", Some("u"), "a/public"));
        assert!(!acl.may_subscribe("c", Some("u"), "a/+"));
        assert!(!acl.may_subscribe("c", Some("u"), "a/#"));
        assert!(!acl.may_subscribe("c", Some("u"), "a/secret"));
    }

    #[test]
    fn names_with_wildcards_or_levels_get_no_pattern_rules() {
        let acl = acl();
        assert!(!acl.may_publish("+", None, "devices/x/y"));
        assert!(!acl.may_subscribe("#", None, "devices/#"));
        assert!(
            !acl.may_publish("c1/x", None, "devices/c1/x/y"),
            "would write into c1's space"
        );
        assert!(!acl.may_publish("c", Some("a/b"), "users/a/b/status"));
        assert!(acl.may_receive("c2", None, "devices/c2/in"));
        assert!(!acl.may_receive("c2", None, "devices/c3/in"));
    }

    #[test]
    fn the_access_word_may_be_left_out() {
        let acl = Acl::parse("topic x/#\n", HashSeed(1, 2)).unwrap();
        assert!(acl.may_publish("c", None, "x/y"));
        assert!(acl.may_subscribe("c", None, "x/y"));
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("user\n", 1, "`user` needs a name"),
            ("topic read\n", 1, "`topic` needs a topic"),
            ("\nfoo bar\n", 2, "unknown keyword"),
            ("topic read a/#/b\n", 1, "'#' must be the last level"),
        ];
        for (text, line, reason) in cases {
            let e = Acl::parse(text, HashSeed(1, 2)).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
        }
    }
}

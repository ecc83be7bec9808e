//! Who gets a broker message: every client's topic filters in a trie keyed by topic level, so
//! matching a topic costs O(levels) rather than O(filters), plus the reference counting that
//! decides when the shared broker connection (aggregating mode) must subscribe or unsubscribe.

use crate::hash::{HashMap, HashSeed};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::ClientKey;
use crate::codec::QoS;

/// A change the broker must hear about, for the engine to send as MQTT SUBSCRIBE / UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamChange {
    /// Subscribe to `filter` (new, or with a higher QoS than before).
    Subscribe {
        /// The topic filter.
        filter: Arc<str>,
        /// The highest QoS any client holds on it.
        qos: QoS,
    },
    /// No client is subscribed to `filter` any more.
    Unsubscribe {
        /// The topic filter.
        filter: Arc<str>,
    },
}

/// Subscribers of one filter, sorted by client.
type Subscribers = Vec<(ClientKey, QoS)>;

/// One topic level of the trie. The node reached by a filter's levels holds that filter's
/// subscribers; a trailing `#` is kept in the parent's `hash` slot since nothing follows it.
#[derive(Debug)]
struct Node {
    /// Children by literal level.
    children: HashMap<Box<str>, Node>,
    /// The child for a `+` level.
    plus: Option<Box<Node>>,
    /// Subscribers of `<this node's path>/#` (or of `#` at the root).
    hash: Subscribers,
    /// Subscribers of exactly this node's path.
    exact: Subscribers,
}

impl Node {
    fn new(seed: HashSeed) -> Self {
        Node {
            children: HashMap::with_hasher(seed),
            plus: None,
            hash: Vec::new(),
            exact: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }

    /// Collects the subscribers of every filter below this node that matches the levels of
    /// `rest` (`None` once the topic is used up). `guard` is set at the root of a `$` topic,
    /// where wildcards must not match (MQTT 3.1.1 §4.7.2).
    fn collect(&self, rest: Option<&str>, guard: bool, out: &mut Vec<(ClientKey, QoS)>) {
        if !guard {
            // `x/#` matches `x` itself as well as anything below it.
            out.extend_from_slice(&self.hash);
        }
        let Some(rest) = rest else {
            out.extend_from_slice(&self.exact);
            return;
        };
        let (level, tail) = match rest.split_once('/') {
            Some((level, tail)) => (level, Some(tail)),
            None => (rest, None),
        };
        if let Some(child) = self.children.get(level) {
            child.collect(tail, false, out);
        }
        if let (Some(plus), false) = (&self.plus, guard) {
            plus.collect(tail, false, out);
        }
    }

    /// The subscriber list for `filter` below this node, creating nodes on the way.
    fn list_mut(&mut self, filter: &str, seed: HashSeed) -> &mut Subscribers {
        let mut node = self;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return &mut node.hash;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(|| Box::new(Node::new(seed)))
            } else {
                node.children
                    .entry(level.into())
                    .or_insert_with(|| Node::new(seed))
            };
        }
        &mut node.exact
    }

    /// Removes `client` from the subscribers of `levels` (what is left of a filter) below this
    /// node, pruning nodes that become empty. Returns `Some(remaining subscribers' max QoS)` if
    /// the client was subscribed, where `None` inside means the filter has no subscriber left.
    fn remove(&mut self, levels: &mut Levels<'_>, client: ClientKey) -> Option<Option<QoS>> {
        let Some(level) = levels.next() else {
            return remove_from(&mut self.exact, client);
        };
        if level == "#" && levels.peek().is_none() {
            return remove_from(&mut self.hash, client);
        }
        if level == "+" {
            let child = self.plus.as_mut()?;
            let result = child.remove(levels, client);
            if child.is_empty() {
                self.plus = None;
            }
            result
        } else {
            let child = self.children.get_mut(level)?;
            let result = child.remove(levels, client);
            if child.is_empty() {
                self.children.remove(level);
            }
            result
        }
    }
}

/// The levels of a filter, as [`Node::remove`] consumes them.
type Levels<'a> = std::iter::Peekable<std::str::Split<'a, char>>;

/// Removes `client` from `list`; see [`Node::remove`] for the result.
fn remove_from(list: &mut Subscribers, client: ClientKey) -> Option<Option<QoS>> {
    let index = list.binary_search_by_key(&client, |e| e.0).ok()?;
    list.remove(index);
    if list.is_empty() {
        // Give the memory back: a filter's last subscriber leaving is the common case.
        *list = Vec::new();
    }
    Some(max_qos(list))
}

fn max_qos(list: &Subscribers) -> Option<QoS> {
    list.iter().map(|e| e.1).max()
}

/// All clients' subscriptions, for matching broker messages to clients and, in aggregating mode,
/// for keeping the shared broker connection's subscriptions in step (reference counted per
/// filter).
///
/// Upstream QoS policy: a filter is subscribed upstream with the highest QoS any client asked
/// for, re-subscribed when that rises, and never downgraded while it has subscribers (a higher
/// QoS upstream costs a little traffic but loses nothing, since each client gets its own granted
/// QoS). It is unsubscribed when its last subscriber leaves.
///
/// Filters are expected to be valid ([`super::topic::validate_topic_filter`]) and QoS levels to
/// be 0 to 2.
#[derive(Debug)]
pub struct SubscriptionTable {
    root: Node,
    /// Each filter with subscribers and the QoS it is subscribed with upstream; ordered, so that
    /// restoring subscriptions after a broker reconnect is deterministic.
    upstream: BTreeMap<Arc<str>, QoS>,
    /// Each client's filters, sorted by filter.
    by_client: HashMap<ClientKey, Vec<(Arc<str>, QoS)>>,
    seed: HashSeed,
}

impl SubscriptionTable {
    /// An empty table whose maps are keyed with `seed`.
    pub fn new(seed: HashSeed) -> Self {
        SubscriptionTable {
            root: Node::new(seed),
            upstream: BTreeMap::new(),
            by_client: HashMap::with_hasher(seed),
            seed,
        }
    }

    /// Subscribes `client` to `filter` with the granted `qos`, or updates the QoS if it is
    /// already subscribed. Returns the upstream subscription needed when the filter is new or its
    /// highest QoS rose.
    pub fn subscribe(
        &mut self,
        client: ClientKey,
        filter: &str,
        qos: QoS,
    ) -> Option<UpstreamChange> {
        let list = self.root.list_mut(filter, self.seed);
        match list.binary_search_by_key(&client, |e| e.0) {
            Ok(i) => list[i].1 = qos,
            Err(i) => list.insert(i, (client, qos)),
        }
        let max = max_qos(list).unwrap_or(qos);

        let (filter, change) = match self.upstream.get_key_value(filter) {
            Some((shared, &current)) => {
                let shared = Arc::clone(shared);
                if max > current {
                    self.upstream.insert(Arc::clone(&shared), max);
                    (Arc::clone(&shared), Some(shared))
                } else {
                    (shared, None)
                }
            }
            None => {
                let shared: Arc<str> = Arc::from(filter);
                self.upstream.insert(Arc::clone(&shared), max);
                (Arc::clone(&shared), Some(shared))
            }
        };

        let mine = self.by_client.entry(client).or_default();
        match mine.binary_search_by(|e| (*e.0).cmp(&filter)) {
            Ok(i) => mine[i].1 = qos,
            Err(i) => mine.insert(i, (filter, qos)),
        }
        change.map(|filter| UpstreamChange::Subscribe { filter, qos: max })
    }

    /// Unsubscribes `client` from `filter`. Returns [`UpstreamChange::Unsubscribe`] when it was
    /// the filter's last subscriber; `None` otherwise, also if it was not subscribed.
    pub fn unsubscribe(&mut self, client: ClientKey, filter: &str) -> Option<UpstreamChange> {
        if let Some(mine) = self.by_client.get_mut(&client) {
            if let Ok(i) = mine.binary_search_by(|e| (*e.0).cmp(filter)) {
                mine.remove(i);
                if mine.is_empty() {
                    self.by_client.remove(&client);
                }
            }
        }
        self.remove_subscriber(client, filter)
    }

    /// The trie and upstream half of [`unsubscribe`](Self::unsubscribe).
    fn remove_subscriber(&mut self, client: ClientKey, filter: &str) -> Option<UpstreamChange> {
        match self
            .root
            .remove(&mut filter.split('/').peekable(), client)?
        {
            Some(_) => None,
            None => {
                let (filter, _) = self.upstream.remove_entry(filter)?;
                Some(UpstreamChange::Unsubscribe { filter })
            }
        }
    }

    /// Removes all of `client`'s subscriptions (lost, or disconnected with a clean session).
    /// Returns the upstream unsubscriptions this causes, in filter order.
    pub fn remove_client(&mut self, client: ClientKey) -> Vec<UpstreamChange> {
        let Some(mine) = self.by_client.remove(&client) else {
            return Vec::new();
        };
        mine.iter()
            .filter_map(|(filter, _)| self.remove_subscriber(client, filter))
            .collect()
    }

    /// Replaces the contents of `out` with the clients that `topic` (a topic name) must be
    /// delivered to, in ascending client order. A client whose filters overlap (say `a/#` and
    /// `a/b`) appears once, with the highest QoS among its matching filters: MQTT 3.1.1 §3.3.5
    /// allows one delivery per matching subscription or one overall, and one is what a
    /// constrained device wants.
    pub fn matches(&self, topic: &str, out: &mut Vec<(ClientKey, QoS)>) {
        out.clear();
        self.root.collect(Some(topic), topic.starts_with('$'), out);
        // Highest QoS first within a client, then keep the first of each client.
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        out.dedup_by_key(|e| e.0);
    }

    /// The filters subscribed upstream with their QoS, sorted by filter: what to subscribe to
    /// again after the broker connection is re-established.
    pub fn filters(&self) -> impl Iterator<Item = (&str, QoS)> + '_ {
        self.upstream.iter().map(|(f, q)| (&**f, *q))
    }

    /// The QoS `filter` is subscribed with upstream (see the policy on the type: the highest
    /// any of its subscribers was granted, not lowered while it has subscribers); `None` if
    /// nobody is subscribed to it.
    pub fn max_qos(&self, filter: &str) -> Option<QoS> {
        self.upstream.get(filter).copied()
    }

    /// `client`'s filters with their granted QoS, sorted by filter (for resuming a session).
    pub fn client_filters(&self, client: ClientKey) -> Vec<(Arc<str>, QoS)> {
        self.by_client.get(&client).cloned().unwrap_or_default()
    }

    /// `client`'s filters with their granted QoS, sorted by filter, borrowed.
    pub fn client_filters_ref(&self, client: ClientKey) -> &[(Arc<str>, QoS)] {
        self.by_client.get(&client).map_or(&[], Vec::as_slice)
    }

    /// How many filters `client` is subscribed to.
    pub fn client_filter_count(&self, client: ClientKey) -> usize {
        self.by_client.get(&client).map_or(0, Vec::len)
    }

    /// The QoS `client` was granted on `filter`, if it is subscribed.
    pub fn granted(&self, client: ClientKey, filter: &str) -> Option<QoS> {
        let mine = self.by_client.get(&client)?;
        let i = mine.binary_search_by(|e| (*e.0).cmp(filter)).ok()?;
        Some(mine[i].1)
    }

    /// How many distinct filters have subscribers.
    pub fn len(&self) -> usize {
        self.upstream.len()
    }

    /// Whether nobody is subscribed to anything.
    pub fn is_empty(&self) -> bool {
        self.upstream.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::topic;
    use proptest::prelude::*;

    const C1: ClientKey = ClientKey(1);
    const C2: ClientKey = ClientKey(2);
    const C3: ClientKey = ClientKey(3);

    fn sub(filter: &str, qos: QoS) -> Option<UpstreamChange> {
        Some(UpstreamChange::Subscribe {
            filter: filter.into(),
            qos,
        })
    }

    fn unsub(filter: &str) -> Option<UpstreamChange> {
        Some(UpstreamChange::Unsubscribe {
            filter: filter.into(),
        })
    }

    fn matched(t: &SubscriptionTable, topic: &str) -> Vec<(ClientKey, QoS)> {
        let mut out = vec![(ClientKey(99), QoS::Two)];
        t.matches(topic, &mut out);
        out
    }

    #[test]
    fn refcounting_across_three_clients() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        assert_eq!(t.subscribe(C1, "a/b", QoS::Zero), sub("a/b", QoS::Zero));
        assert_eq!(t.subscribe(C2, "a/b", QoS::Zero), None);
        assert_eq!(t.subscribe(C3, "a/b", QoS::Zero), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.unsubscribe(C2, "a/b"), None);
        assert_eq!(t.unsubscribe(C2, "a/b"), None, "not subscribed any more");
        assert_eq!(t.unsubscribe(C1, "a/b"), None);
        assert_eq!(matched(&t, "a/b"), [(C3, QoS::Zero)]);
        assert_eq!(t.unsubscribe(C3, "a/b"), unsub("a/b"));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "trie pruned");
        assert!(t.by_client.is_empty());
        assert_eq!(matched(&t, "a/b"), []);
    }

    #[test]
    fn unknown_unsubscribe_is_harmless() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        assert_eq!(t.unsubscribe(C1, "x/#"), None);
        t.subscribe(C1, "x/y", QoS::One);
        assert_eq!(t.unsubscribe(C2, "x/y"), None);
        assert_eq!(t.unsubscribe(C1, "x/#"), None);
        assert_eq!(t.unsubscribe(C1, "x/+"), None);
        assert_eq!(t.unsubscribe(C1, "x"), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn qos_upgrade_resubscribes_and_no_downgrade() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        assert_eq!(t.subscribe(C1, "s/#", QoS::Zero), sub("s/#", QoS::Zero));
        assert_eq!(t.subscribe(C2, "s/#", QoS::One), sub("s/#", QoS::One));
        assert_eq!(t.subscribe(C3, "s/#", QoS::One), None);
        // Same client again: only its QoS changes.
        assert_eq!(t.subscribe(C1, "s/#", QoS::Two), sub("s/#", QoS::Two));
        assert_eq!(t.subscribe(C1, "s/#", QoS::Zero), None);
        assert_eq!(t.granted(C1, "s/#"), Some(QoS::Zero));
        assert_eq!(t.filters().collect::<Vec<_>>(), [("s/#", QoS::Two)]);
        assert_eq!(t.max_qos("s/#"), Some(QoS::Two));
        assert_eq!(t.max_qos("s/+"), None);
        assert_eq!(
            matched(&t, "s/x"),
            [(C1, QoS::Zero), (C2, QoS::One), (C3, QoS::One)]
        );
    }

    #[test]
    fn overlapping_filters_deliver_once_at_max_qos() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        t.subscribe(C1, "a/b", QoS::Zero);
        t.subscribe(C1, "a/+", QoS::Two);
        t.subscribe(C1, "#", QoS::One);
        t.subscribe(C1, "a/#", QoS::Zero);
        t.subscribe(C2, "a/b", QoS::One);
        assert_eq!(matched(&t, "a/b"), [(C1, QoS::Two), (C2, QoS::One)]);
        assert_eq!(matched(&t, "a"), [(C1, QoS::One)]);
        assert_eq!(matched(&t, "a/b/c"), [(C1, QoS::One)]);
        assert_eq!(matched(&t, "b"), [(C1, QoS::One)]);
    }

    #[test]
    fn dollar_topics() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        t.subscribe(C1, "#", QoS::Zero);
        t.subscribe(C2, "+/x", QoS::Zero);
        t.subscribe(C3, "$SYS/#", QoS::Zero);
        assert_eq!(matched(&t, "$SYS/x"), [(C3, QoS::Zero)]);
        assert_eq!(matched(&t, "$SYS"), [(C3, QoS::Zero)]);
        assert_eq!(matched(&t, "a/x"), [(C1, QoS::Zero), (C2, QoS::Zero)]);
        assert_eq!(matched(&t, "a/$x"), [(C1, QoS::Zero)]);
    }

    #[test]
    fn empty_levels() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        t.subscribe(C1, "a/+/c", QoS::Zero);
        t.subscribe(C2, "+", QoS::Zero);
        t.subscribe(C3, "/+", QoS::Zero);
        assert_eq!(matched(&t, "a//c"), [(C1, QoS::Zero)]);
        assert_eq!(matched(&t, "/"), [(C3, QoS::Zero)]);
        assert_eq!(matched(&t, "x"), [(C2, QoS::Zero)]);
    }

    #[test]
    fn remove_client() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        t.subscribe(C1, "z", QoS::One);
        t.subscribe(C1, "a/#", QoS::One);
        t.subscribe(C1, "m/+", QoS::Zero);
        t.subscribe(C2, "m/+", QoS::Two);
        assert_eq!(
            t.client_filters(C1),
            [
                (Arc::from("a/#"), QoS::One),
                (Arc::from("m/+"), QoS::Zero),
                (Arc::from("z"), QoS::One)
            ]
        );
        let changes = t.remove_client(C1);
        assert_eq!(
            changes,
            [unsub("a/#").unwrap(), unsub("z").unwrap()],
            "sorted by filter; m/+ still has C2"
        );
        assert_eq!(t.client_filters(C1), []);
        assert_eq!(t.remove_client(C1), []);
        assert_eq!(matched(&t, "m/x"), [(C2, QoS::Two)]);
        assert_eq!(t.remove_client(C2), [unsub("m/+").unwrap()]);
        assert!(t.root.is_empty());
    }

    #[test]
    fn deterministic_order() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        for k in [7, 3, 9, 1, 5] {
            t.subscribe(ClientKey(k), &format!("f/{k}"), QoS::Zero);
            t.subscribe(ClientKey(k), "f/+", QoS::One);
        }
        t.subscribe(ClientKey(4), "#", QoS::Zero);
        let keys: Vec<u32> = matched(&t, "f/9").iter().map(|e| e.0 .0).collect();
        assert_eq!(keys, [1, 3, 4, 5, 7, 9]);
        let filters: Vec<&str> = t.filters().map(|e| e.0).collect();
        assert_eq!(filters, ["#", "f/+", "f/1", "f/3", "f/5", "f/7", "f/9"]);
    }

    #[test]
    fn filter_strings_are_shared() {
        let mut t = SubscriptionTable::new(HashSeed(7, 8));
        let Some(UpstreamChange::Subscribe { filter, .. }) = t.subscribe(C1, "a", QoS::Zero) else {
            panic!("expected a subscribe");
        };
        t.subscribe(C2, "a", QoS::Zero);
        assert!(Arc::ptr_eq(&filter, &t.client_filters(C1)[0].0));
        assert!(Arc::ptr_eq(&filter, &t.client_filters(C2)[0].0));
    }

    fn level(wild: bool) -> BoxedStrategy<String> {
        let mut choices = vec!["a", "b", "", "$x"];
        if wild {
            choices.push("+");
        }
        proptest::sample::select(choices)
            .prop_map(str::to_owned)
            .boxed()
    }

    fn filter() -> impl Strategy<Value = String> {
        (proptest::collection::vec(level(true), 0..4), any::<bool>()).prop_map(
            |(mut levels, hash)| {
                // Empty (or a lone empty level) would be invalid; `#` stands in.
                if hash || levels.concat().is_empty() && levels.len() < 2 {
                    levels.push("#".to_owned());
                }
                levels.join("/")
            },
        )
    }

    fn topic_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(false), 1..5).prop_map(|l| l.join("/"))
    }

    fn qos() -> impl Strategy<Value = QoS> {
        proptest::sample::select(vec![QoS::Zero, QoS::One, QoS::Two])
    }

    proptest! {
        #[test]
        fn matches_agrees_with_brute_force(
            subs in proptest::collection::vec((0u32..6, filter(), qos()), 0..25),
            unsubs in proptest::collection::vec((0u32..6, filter()), 0..10),
            topics in proptest::collection::vec(topic_name(), 1..8),
        ) {
            let mut t = SubscriptionTable::new(HashSeed(7, 8));
            // The model: (client, filter) -> qos.
            let mut model: BTreeMap<(u32, String), QoS> = BTreeMap::new();
            for (c, f, q) in &subs {
                let _ = t.subscribe(ClientKey(*c), f, *q);
                model.insert((*c, f.clone()), *q);
            }
            for (c, f) in &unsubs {
                let _ = t.unsubscribe(ClientKey(*c), f);
                model.remove(&(*c, f.clone()));
            }
            let mut out = Vec::new();
            for name in &topics {
                t.matches(name, &mut out);
                let mut expected: BTreeMap<u32, QoS> = BTreeMap::new();
                for ((c, f), q) in &model {
                    if topic::matches(f, name) {
                        let e = expected.entry(*c).or_insert(*q);
                        *e = (*e).max(*q);
                    }
                }
                let expected: Vec<(ClientKey, QoS)> =
                    expected.into_iter().map(|(c, q)| (ClientKey(c), q)).collect();
                prop_assert_eq!(&out, &expected, "topic {:?}", name);
            }
            // The upstream view: one entry per filter with subscribers.
            let mut filters: Vec<&str> = model.keys().map(|k| k.1.as_str()).collect();
            filters.sort_unstable();
            filters.dedup();
            prop_assert_eq!(t.filters().map(|e| e.0).collect::<Vec<_>>(), filters);
            for c in 0..6 {
                let _ = t.remove_client(ClientKey(c));
            }
            prop_assert!(t.is_empty());
            prop_assert!(t.root.is_empty());
            prop_assert!(t.by_client.is_empty());
        }
    }
}

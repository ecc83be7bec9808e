//! Who a device is, and whether it may be who it claims (issue 12): the devices the operator
//! lists (`[auth] clients_file`), how each may prove its ClientId (a DTLS PSK identity or
//! certificate name, the networks it may use over plain UDP, the radio addresses it may use
//! over serial), whether unlisted ClientIds are let in (`allow_anonymous`), the topic rules
//! (`acl_file`, [`super::acl`]) and where connectionless QoS -1 publishes may come from.
//!
//! The engine asks [`AuthPolicy::authenticate`] at every CONNECT and at every wake-up from a
//! new address, so that a session moves to a new address only when that address proves the
//! same identity. A ClientId that is a PSK identity of a DTLS listener is bound to it even when
//! it is not listed: nobody can claim it over plain UDP.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use super::acl::Acl;
use super::peer::{Link, PeerAddr};
use crate::hash::{HashMap, HashSeed, HashSet};

/// What a secured transport proved about the sender of a frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A DTLS association whose client knew the key of this PSK identity.
    Psk(Arc<str>),
    /// A DTLS association whose client showed a certificate the CA signed, with these names
    /// (the subject's common name first, then its subject alternative names).
    Certificate(Arc<[Arc<str>]>),
}

impl Identity {
    /// Whether the identity is `name`: the PSK identity, or one of the certificate's names.
    fn is(&self, name: &str, psk: bool) -> bool {
        match self {
            Identity::Psk(identity) => psk && &**identity == name,
            Identity::Certificate(names) => !psk && names.iter().any(|n| &**n == name),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Psk(identity) => write!(f, "psk {identity:?}"),
            Identity::Certificate(names) => match names.first() {
                Some(cn) => write!(f, "certificate {cn:?}"),
                None => f.write_str("certificate without a name"),
            },
        }
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Every address (`0.0.0.0/0` and `::/0` together).
    pub const ANY: [Network; 2] = [
        Network {
            addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            prefix: 0,
        },
        Network {
            addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            prefix: 0,
        },
    ];

    /// Whether `ip` is in the network. An IPv4 address seen through a dual-stack socket
    /// (`::ffff:10.0.0.7`) is the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }

    /// Whether the network holds only loopback addresses.
    pub fn is_loopback(&self) -> bool {
        let width = if self.addr.is_ipv4() { 8 } else { 128 };
        self.addr.is_loopback() && self.prefix >= width
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let (whole, rest) = (usize::from(prefix / 8), prefix % 8);
    if net[..whole] != ip[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        net[whole] & mask == ip[whole] & mask
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network (e.g. 10.0.0.0/8 or fd00::/8)"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {width}"))?,
        };
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One listed device (a `[[client]]` table of the clients file).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Its ClientId.
    pub client_id: Arc<str>,
    /// The DTLS PSK identity it must use; `None`: its ClientId.
    pub psk_identity: Option<Arc<str>>,
    /// The certificate name (CN or SAN) it must show; `None`: its ClientId.
    pub cert_cn: Option<Arc<str>>,
    /// Networks it may connect from over plain UDP (none: not over plain UDP).
    pub networks: Vec<Network>,
    /// XBee 64-bit addresses it may use over serial (none: not over serial).
    pub radios: Vec<u64>,
    /// Its broker username in transparent mode, and the user its ACL rules are under.
    pub username: Option<Arc<str>>,
    /// Its broker password in transparent mode.
    pub password: Option<Arc<str>>,
}

impl fmt::Debug for DeviceEntry {
    // Hand-written so that the password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceEntry")
            .field("client_id", &self.client_id)
            .field("psk_identity", &self.psk_identity)
            .field("cert_cn", &self.cert_cn)
            .field("networks", &self.networks)
            .field("radios", &self.radios)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a device was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not listed, and `allow_anonymous` is off.
    NotListed,
    /// Listed (or bound to a PSK identity), but this address or identity is not one of its.
    WrongProof,
    /// A DTLS identity that is not the ClientId it claims.
    IdentityMismatch,
}

impl Refusal {
    /// For the log.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotListed => "not authorized: unknown client and allow_anonymous is off",
            Refusal::WrongProof => {
                "not authorized: this address or identity may not use the client id"
            }
            Refusal::IdentityMismatch => "not authorized: the DTLS identity is another client id",
        }
    }
}

/// Everything the engine consults about identities and topic rights. [`AuthPolicy::open`],
/// the default, is today's zero-setup behaviour: anyone may be anyone and do anything.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    clients: HashMap<Arc<str>, DeviceEntry>,
    /// PSK identities of the DTLS listeners: ClientIds only DTLS with that identity may use.
    bound: HashSet<Arc<str>>,
    /// PSK identities and certificate names listed devices are given (`psk_identity`,
    /// `cert_cn`): no other ClientId may be proven with them.
    claimed: HashSet<Arc<str>>,
    allow_anonymous: bool,
    acl: Option<Acl>,
    /// Where QoS -1 publishes may come from over UDP (over serial: when anonymous devices are
    /// allowed).
    qos_minus1_from: Vec<Network>,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy::open(HashSeed(0, 0))
    }
}

impl AuthPolicy {
    /// No clients file, no ACL: every device is let in and may use every topic.
    pub fn open(seed: HashSeed) -> AuthPolicy {
        AuthPolicy {
            clients: HashMap::with_hasher(seed),
            bound: HashSet::with_hasher(seed),
            claimed: HashSet::with_hasher(seed),
            allow_anonymous: true,
            acl: None,
            qos_minus1_from: Network::ANY.to_vec(),
        }
    }

    /// A policy from its parts: the listed devices, the DTLS listeners' PSK identities, whether
    /// unlisted devices are let in, the ACL and the QoS -1 networks.
    pub fn new(
        seed: HashSeed,
        clients: Vec<DeviceEntry>,
        psk_identities: impl IntoIterator<Item = Arc<str>>,
        allow_anonymous: bool,
        acl: Option<Acl>,
        qos_minus1_from: Vec<Network>,
    ) -> AuthPolicy {
        let mut policy = AuthPolicy::open(seed);
        for entry in &clients {
            let named = [&entry.psk_identity, &entry.cert_cn];
            policy.claimed.extend(named.into_iter().flatten().cloned());
        }
        policy.clients.extend(
            clients
                .into_iter()
                .map(|entry| (entry.client_id.clone(), entry)),
        );
        policy.bound.extend(psk_identities);
        policy.allow_anonymous = allow_anonymous;
        policy.acl = acl;
        policy.qos_minus1_from = qos_minus1_from;
        policy
    }

    /// Whether unlisted devices are let in.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// The listed device with this ClientId.
    pub fn entry(&self, client_id: &str) -> Option<&DeviceEntry> {
        self.clients.get(client_id)
    }

    /// The username a device's ACL rules are under.
    pub fn username(&self, client_id: &str) -> Option<&str> {
        self.entry(client_id).and_then(|e| e.username.as_deref())
    }

    /// Whether `client_id` may be used by a frame from `peer` carrying `identity` (the DTLS
    /// association's, if it came over one).
    ///
    /// # Errors
    /// [`Refusal`] saying what is missing.
    pub fn authenticate(
        &self,
        client_id: &str,
        peer: &PeerAddr,
        identity: Option<&Identity>,
    ) -> Result<(), Refusal> {
        // A PSK identity proves something only while a psk_file holds it (a reload that
        // removes it takes the proof away).
        if let Some(Identity::Psk(id)) = identity {
            if !self.bound.contains(id) {
                return Err(Refusal::WrongProof);
            }
        }
        if let Some(entry) = self.clients.get(client_id) {
            let proven = match (identity, peer.link) {
                (Some(identity), _) => {
                    // What the entry names, or, when it names neither, the ClientId for both.
                    let (psk, cert) = match (&entry.psk_identity, &entry.cert_cn) {
                        (None, None) => (Some(client_id), Some(client_id)),
                        (psk, cert) => (psk.as_deref(), cert.as_deref()),
                    };
                    psk.is_some_and(|p| identity.is(p, true))
                        || cert.is_some_and(|c| identity.is(c, false))
                }
                (None, Link::Udp(addr)) => entry.networks.iter().any(|n| n.contains(addr.ip())),
                (None, Link::Serial { radio, .. }) => radio != 0 && entry.radios.contains(&radio),
                (None, Link::Dtls(_)) => false,
            };
            return if proven {
                Ok(())
            } else {
                Err(Refusal::WrongProof)
            };
        }
        match identity {
            // An identity a listed device is given belongs to that device alone.
            Some(_) if self.claimed.contains(client_id) => Err(Refusal::WrongProof),
            // Whoever proved an identity may use it as its ClientId, and only that one.
            Some(identity) if identity.is(client_id, true) || identity.is(client_id, false) => {
                Ok(())
            }
            Some(_) => Err(Refusal::IdentityMismatch),
            None if self.bound.contains(client_id) => Err(Refusal::WrongProof),
            None if self.allow_anonymous => Ok(()),
            None => Err(Refusal::NotListed),
        }
    }

    /// Whether a QoS -1 publish from `peer` is let in at all.
    pub fn allows_qos_minus1_from(&self, peer: &PeerAddr) -> bool {
        match peer.link {
            Link::Udp(addr) => self.qos_minus1_from.iter().any(|n| n.contains(addr.ip())),
            Link::Serial { .. } => self.allow_anonymous,
            // A DTLS client has a session to publish with; connectionless means no handshake.
            Link::Dtls(_) => false,
        }
    }

    /// Whether `client_id` may publish to `topic` (always, without an ACL).
    pub fn may_publish(&self, client_id: &str, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.may_publish(client_id, self.username(client_id), topic))
    }

    /// Whether `client_id` may subscribe to `filter` (always, without an ACL).
    pub fn may_subscribe(&self, client_id: &str, filter: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.may_subscribe(client_id, self.username(client_id), filter))
    }

    /// Whether `client_id` may receive a message on the topic name `topic` (always, without
    /// an ACL): checked again at delivery, so that a reloaded ACL applies to subscriptions
    /// granted before it.
    pub fn may_receive(&self, client_id: &str, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.may_receive(client_id, self.username(client_id), topic))
    }

    /// Whether a QoS -1 publish (no session, no ClientId) may go to `topic`: the ACL's rules
    /// for devices without a username apply.
    pub fn may_publish_anonymously(&self, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.may_publish("", None, topic))
    }

    /// Whether there is an ACL.
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn udp(addr: &str) -> PeerAddr {
        PeerAddr::udp(addr.parse::<SocketAddr>().unwrap())
    }

    fn policy(allow_anonymous: bool) -> AuthPolicy {
        let sensor = DeviceEntry {
            client_id: "sensor-1".into(),
            networks: vec!["10.1.0.0/16".parse().unwrap()],
            radios: vec![0x0013_A200_40A1_B2C3],
            ..DeviceEntry::default()
        };
        let secure = DeviceEntry {
            client_id: "secure-1".into(),
            psk_identity: Some("psk-of-secure-1".into()),
            ..DeviceEntry::default()
        };
        AuthPolicy::new(
            HashSeed(1, 2),
            vec![sensor, secure],
            [
                "bound-1".into(),
                "psk-of-secure-1".into(),
                "secure-1".into(),
            ],
            allow_anonymous,
            None,
            vec!["127.0.0.0/8".parse().unwrap()],
        )
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Network = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.9".parse().unwrap()),
            "IPv4 through a dual-stack socket"
        );
        let odd: Network = "192.168.1.128/25".parse().unwrap();
        assert!(odd.contains("192.168.1.200".parse().unwrap()));
        assert!(!odd.contains("192.168.1.127".parse().unwrap()));
        let host: Network = "fd00::1".parse().unwrap();
        assert_eq!(host.to_string(), "fd00::1/128");
        assert!("127.0.0.1/32".parse::<Network>().unwrap().is_loopback());
        assert!(!"0.0.0.0/0".parse::<Network>().unwrap().is_loopback());
        assert!(Network::ANY
            .iter()
            .any(|n| n.contains("8.8.8.8".parse().unwrap())));
        for bad in ["10.0.0.0/33", "10.0.0/8", "host", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_listed_device_proves_itself_by_network_radio_or_identity() {
        let p = policy(true);
        assert_eq!(
            p.authenticate("sensor-1", &udp("10.1.2.3:5000"), None),
            Ok(())
        );
        assert_eq!(
            p.authenticate("sensor-1", &udp("10.9.2.3:5000"), None),
            Err(Refusal::WrongProof),
            "listed devices are protected even with allow_anonymous"
        );
        let radio = PeerAddr::direct(Link::Serial {
            port: 0,
            radio: 0x0013_A200_40A1_B2C3,
        });
        assert_eq!(p.authenticate("sensor-1", &radio, None), Ok(()));
        let other_radio = PeerAddr::direct(Link::Serial { port: 0, radio: 7 });
        assert!(p.authenticate("sensor-1", &other_radio, None).is_err());
        let dtls = PeerAddr::direct(Link::Dtls("10.9.9.9:1".parse().unwrap()));
        let right = Identity::Psk("psk-of-secure-1".into());
        let wrong = Identity::Psk("secure-1".into());
        assert_eq!(p.authenticate("secure-1", &dtls, Some(&right)), Ok(()));
        assert!(p.authenticate("secure-1", &dtls, Some(&wrong)).is_err());
        assert!(
            p.authenticate("secure-1", &udp("127.0.0.1:1"), None)
                .is_err(),
            "no networks: DTLS only"
        );
        let cert = Identity::Certificate(vec![Arc::from("sensor-1")].into());
        assert_eq!(p.authenticate("sensor-1", &dtls, Some(&cert)), Ok(()));
        let cert_named_secure = Identity::Certificate(vec![Arc::from("secure-1")].into());
        assert!(
            p.authenticate("secure-1", &dtls, Some(&cert_named_secure))
                .is_err(),
            "an entry naming only a psk_identity takes no certificate"
        );
        let claimed = Identity::Psk("psk-of-secure-1".into());
        assert!(
            p.authenticate("psk-of-secure-1", &dtls, Some(&claimed))
                .is_err(),
            "another device's identity is not a ClientId of its own"
        );
    }

    #[test]
    fn a_psk_identity_proves_nothing_once_no_psk_file_holds_it() {
        let p = policy(false);
        let dtls = PeerAddr::direct(Link::Dtls("192.0.2.1:2".parse().unwrap()));
        let gone = Identity::Psk("removed".into());
        assert_eq!(
            p.authenticate("removed", &dtls, Some(&gone)),
            Err(Refusal::WrongProof)
        );
    }

    #[test]
    fn unlisted_devices_depend_on_allow_anonymous_and_identities_bind() {
        let open = policy(true);
        let closed = policy(false);
        let anywhere = udp("192.0.2.1:1");
        assert_eq!(open.authenticate("stranger", &anywhere, None), Ok(()));
        assert_eq!(
            closed.authenticate("stranger", &anywhere, None),
            Err(Refusal::NotListed)
        );
        assert_eq!(
            open.authenticate("bound-1", &anywhere, None),
            Err(Refusal::WrongProof),
            "a PSK identity is not free for plain UDP"
        );
        let dtls = PeerAddr::direct(Link::Dtls("192.0.2.1:2".parse().unwrap()));
        let id = Identity::Psk("bound-1".into());
        assert_eq!(closed.authenticate("bound-1", &dtls, Some(&id)), Ok(()));
        assert_eq!(
            open.authenticate("stranger", &dtls, Some(&id)),
            Err(Refusal::IdentityMismatch)
        );
    }

    #[test]
    fn qos_minus1_comes_only_from_its_networks() {
        let p = policy(false);
        assert!(p.allows_qos_minus1_from(&udp("127.0.0.1:9")));
        assert!(!p.allows_qos_minus1_from(&udp("10.1.0.1:9")));
        assert!(!p.allows_qos_minus1_from(&PeerAddr::direct(Link::Serial { port: 0, radio: 1 })));
        assert!(AuthPolicy::open(HashSeed(0, 0)).allows_qos_minus1_from(&udp("10.1.0.1:9")));
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let entry = DeviceEntry {
            client_id: "c".into(),
            password: Some("hunter2".into()),
            ..DeviceEntry::default()
        };
        assert!(!format!("{entry:?}").contains("hunter2"));
    }
}

//! Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1): a keyed hash of the client's
//! address and ClientHello parameters, so that the listener can check on the second
//! ClientHello that the client really receives at its source address, without having kept
//! anything from the first. The key rotates with time, so a cookie is good for one to two
//! rotation periods.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::hmac;

use super::hello::ClientHello;

/// How long one cookie key is used. A cookie stays valid for the current and the previous
/// period, so for at least this long: enough for any client's round trip, short enough that
/// a captured cookie is soon worthless.
const ROTATION: Duration = Duration::from_secs(30);
/// Bytes of HMAC-SHA256 kept in a cookie; 128 bits cannot be guessed.
const TAG_LEN: usize = 16;
/// One byte names the key period, then the truncated tag.
pub(crate) const COOKIE_LEN: usize = 1 + TAG_LEN;

/// The cookie keys: one per rotation period, derived from the listener's secret.
pub(crate) struct CookieJar {
    master: hmac::Key,
    /// The instant that period 0 starts at: the first one the listener was given.
    origin: Option<Instant>,
    /// The keys of the current and the previous period (by period parity), derived on first
    /// use; `u64::MAX` marks a slot not filled yet (no listener lives that many periods).
    keys: [(u64, hmac::Key); 2],
}

impl CookieJar {
    pub fn new(secret: [u8; 32]) -> Self {
        CookieJar {
            master: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            origin: None,
            keys: [
                (u64::MAX, hmac::Key::new(hmac::HMAC_SHA256, &[])),
                (u64::MAX, hmac::Key::new(hmac::HMAC_SHA256, &[])),
            ],
        }
    }

    fn period(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let elapsed = now.saturating_duration_since(origin);
        elapsed.as_secs() / ROTATION.as_secs()
    }

    fn key(&mut self, period: u64) -> &hmac::Key {
        let slot = &mut self.keys[(period % 2) as usize];
        if slot.0 != period {
            let derived = hmac::sign(&self.master, &period.to_be_bytes());
            *slot = (period, hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()));
        }
        &slot.1
    }

    fn tag(&mut self, period: u64, peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(self.key(period));
        match peer.ip() {
            IpAddr::V4(ip) => {
                ctx.update(&[4]);
                ctx.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                ctx.update(&[6]);
                ctx.update(&ip.octets());
            }
        }
        ctx.update(&peer.port().to_be_bytes());
        // RFC 6347 §4.2.1: the client must repeat these parameters in its second ClientHello.
        ctx.update(&hello.client_version);
        ctx.update(hello.random);
        for field in [hello.session_id, hello.cipher_suites] {
            ctx.update(&[field.len().min(255) as u8]);
            ctx.update(field);
        }
        let full = ctx.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    /// The cookie for this ClientHello from `peer`, in the current period.
    pub fn issue(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        hello: &ClientHello<'_>,
    ) -> [u8; COOKIE_LEN] {
        let period = self.period(now);
        let mut cookie = [0u8; COOKIE_LEN];
        cookie[0] = period as u8;
        cookie[1..].copy_from_slice(&self.tag(period, peer, hello));
        cookie
    }

    /// Whether the ClientHello carries a cookie issued to `peer` for these parameters in the
    /// current or the previous period.
    pub fn verify(&mut self, now: Instant, peer: SocketAddr, hello: &ClientHello<'_>) -> bool {
        let Some((&named, tag)) = hello.cookie.split_first() else {
            return false;
        };
        if tag.len() != TAG_LEN {
            return false;
        }
        let current = self.period(now);
        let candidates = [Some(current), current.checked_sub(1)];
        let Some(period) = candidates.into_iter().flatten().find(|p| *p as u8 == named) else {
            return false;
        };
        let expected = self.tag(period, peer, hello);
        // Constant time, so a forger learns nothing from how fast a guess is refused.
        expected
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("CookieJar").finish_non_exhaustive()
    }
}

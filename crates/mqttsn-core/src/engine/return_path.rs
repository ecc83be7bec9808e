//! The return-path check: a device address that has not yet shown it receives what the gateway
//! sends gets no more bytes than came from it. A blind CONNECT and SUBSCRIBE with a forged
//! source address then cannot turn the gateway into a flood aimed at that address; messages
//! for such a device wait in its (bounded) queue until it proves itself.
//!
//! Proof is a PINGREQ from the session's own address, or an acknowledgement of something the
//! gateway sent (PUBACK, PUBREC, PUBCOMP or REGACK matching the message in flight). A session
//! that moves to another address needs the proof again. This stops the passive, blind
//! reflection (a forged CONNECT and SUBSCRIBE, then silence). A forger who keeps sending, a
//! PINGREQ or a guessed acknowledgement, passes: proving identity is DTLS's job, not this one.

use super::gateway::Gateway;
use super::ClientKey;

impl Gateway {
    /// Counts `len` bytes received from `key`'s address while it is unproven
    /// (times `limits.return_path_factor`).
    pub(super) fn credit_in(&mut self, key: ClientKey, len: usize) {
        let factor = self.settings.limits.return_path_factor.max(1);
        if let Some(client) = self.client_mut(key) {
            if !client.verified {
                let len = u32::try_from(len)
                    .unwrap_or(u32::MAX)
                    .saturating_mul(factor);
                client.credit = client.credit.saturating_add(len);
            }
        }
    }

    /// Whether `len` more bytes the gateway sends on its own (broker messages, its REGISTERs,
    /// retransmissions) may go to `key` now; if so they are charged. What does not fit waits.
    pub(super) fn may_send(&mut self, key: ClientKey, len: usize) -> bool {
        let enabled = self.settings.limits.verify_return_path;
        let Some(client) = self.client_mut(key) else {
            return false;
        };
        if client.verified || !enabled {
            return true;
        }
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        if client.credit < len {
            self.counters.return_path_waits += 1;
            return false;
        }
        client.credit -= len;
        true
    }

    /// Charges an answer of `len` bytes to `key`'s credit. Answers are sent regardless: each
    /// answers a request, and none is more than a third larger than the smallest request it
    /// answers (SUBACK 8 bytes for a SUBSCRIBE of 6), so a forger gains nothing it does not
    /// keep paying for, while a device that has not yet pinged still hears its SUBACKs.
    pub(super) fn charge_reply(&mut self, key: ClientKey, len: usize) {
        if let Some(client) = self.client_mut(key) {
            if !client.verified {
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                client.credit = client.credit.saturating_sub(len);
            }
        }
    }

    /// The device proved it receives at its address: what waited for that goes out now.
    pub(super) fn verify_return_path(&mut self, now: crate::time::Instant, key: ClientKey) {
        let newly = match self.client_mut(key) {
            Some(client) if !client.verified => {
                client.verified = true;
                client.credit = 0;
                true
            }
            _ => false,
        };
        if newly {
            self.pump(now, key);
        }
    }
}

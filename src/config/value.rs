//! Parsers for the value syntaxes the configuration uses beyond plain TOML types: durations with a
//! unit, and the upstream broker url.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::time::Duration;

/// What a malformed duration should have looked like; shared by every duration key.
pub(super) const DURATION_EXPECTED: &str = "expected a duration like 10s, 500ms, 15m or 1h";

/// Parses a whole number followed by a unit: `ms`, `s`, `m` or `h` (`"500ms"`, `"10s"`, `"15m"`,
/// `"1h"`).
///
/// This is the form [`Duration`]'s `Display` writes, so printed durations read back unchanged.
/// Returns `None` for anything else: a missing unit, a sign, a fraction, spaces or overflow.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let unit_start = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(unit_start);
    if digits.is_empty() {
        return None;
    }
    let count: u64 = digits.parse().ok()?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    count
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
}

/// Where the gateway's upstream MQTT connections go (`upstream.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamUrl {
    /// Plain MQTT over TCP: `mqtt://host[:port]`.
    Tcp {
        /// A host name, or an IP address (IPv6 without the brackets the url needs).
        host: String,
        /// The broker's port, [`UpstreamUrl::DEFAULT_TCP_PORT`] if the url has none.
        port: u16,
    },
    /// MQTT over TLS: `mqtts://host[:port]`.
    Tls {
        /// A host name, or an IP address (IPv6 without the brackets the url needs). Also the
        /// name the broker's certificate is checked against.
        host: String,
        /// The broker's port, [`UpstreamUrl::DEFAULT_TLS_PORT`] if the url has none.
        port: u16,
    },
    /// The broker built into the gateway process (`embedded`), listening on
    /// `upstream.embedded_bind`.
    Embedded,
}

impl UpstreamUrl {
    /// The port of an `mqtt://` url without one.
    pub const DEFAULT_TCP_PORT: u16 = 1883;
    /// The port of an `mqtts://` url without one.
    pub const DEFAULT_TLS_PORT: u16 = 8883;

    /// Whether connections use TLS (and so whether the TLS file settings apply).
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamUrl::Tls { .. })
    }
}

/// Why a string is not a valid [`UpstreamUrl`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid url {url:?}: {reason} (expected mqtt://host[:port], mqtts://host[:port] or embedded)"
)]
pub struct UrlError {
    url: String,
    reason: &'static str,
}

impl FromStr for UpstreamUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let fail = |reason| UrlError {
            url: url.to_owned(),
            reason,
        };
        if url == "embedded" {
            return Ok(UpstreamUrl::Embedded);
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| fail("missing scheme"))?;
        let default_port = match scheme {
            "mqtt" => Self::DEFAULT_TCP_PORT,
            "mqtts" => Self::DEFAULT_TLS_PORT,
            _ => return Err(fail("unsupported scheme")),
        };
        // "mqtt://broker/" is a common way of writing the bare authority; anything longer is a
        // path, which MQTT has no use for.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(fail("a path, query or fragment is not allowed"));
        }
        if authority.contains('@') {
            // Credentials in a url end up in logs; they have their own keys.
            return Err(fail(
                "credentials are not allowed in the url, use upstream.username and upstream.password",
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (address, after) = bracketed
                .split_once(']')
                .ok_or_else(|| fail("missing ']' after the IPv6 address"))?;
            address
                .parse::<Ipv6Addr>()
                .map_err(|_| fail("invalid IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| fail("expected ':port' after ']'"))?,
                ),
            };
            (address, port)
        } else {
            let mut parts = authority.splitn(3, ':');
            let host = parts.next().unwrap_or_default();
            let port = parts.next();
            if parts.next().is_some() {
                return Err(fail("an IPv6 address must be in brackets, like [::1]"));
            }
            let valid_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
            if !host.chars().all(valid_name) {
                return Err(fail("invalid host name"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(fail("missing host"));
        }
        let port = match port {
            None => default_port,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(fail("invalid port")),
            },
        };
        let host = host.to_owned();
        Ok(if scheme == "mqtts" {
            UpstreamUrl::Tls { host, port }
        } else {
            UpstreamUrl::Tcp { host, port }
        })
    }
}

impl fmt::Display for UpstreamUrl {
    /// The url as the configuration writes it, always with the port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, host, port) = match self {
            UpstreamUrl::Tcp { host, port } => ("mqtt", host, port),
            UpstreamUrl::Tls { host, port } => ("mqtts", host, port),
            UpstreamUrl::Embedded => return f.write_str("embedded"),
        };
        if host.contains(':') {
            write!(f, "{scheme}://[{host}]:{port}")
        } else {
            write!(f, "{scheme}://{host}:{port}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_each_unit() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for bad in [
            "", "10", "s", "ms", "-5s", "+5s", "1.5s", "10 s", " 10s", "10s ", "10sec", "10S",
            "1d", "5m30s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        // Too many milliseconds for a u64.
        assert_eq!(parse_duration("18446744073709551615h"), None);
        assert_eq!(parse_duration("99999999999999999999999s"), None);
    }

    #[test]
    fn durations_read_back_what_display_writes() {
        for ms in [
            0, 1, 999, 1000, 1500, 60_000, 90_000, 900_000, 3_600_000, 7_200_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&d.to_string()), Some(d));
        }
    }

    fn tcp(host: &str, port: u16) -> UpstreamUrl {
        UpstreamUrl::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn urls_of_every_form() {
        let tls = |host: &str, port| UpstreamUrl::Tls {
            host: host.to_owned(),
            port,
        };
        let cases = [
            ("mqtt://127.0.0.1:1883", tcp("127.0.0.1", 1883)),
            ("mqtt://broker.example.com", tcp("broker.example.com", 1883)),
            ("mqtt://broker/", tcp("broker", 1883)),
            ("mqtt://my_host-1:10883", tcp("my_host-1", 10883)),
            (
                "mqtts://broker.example.com",
                tls("broker.example.com", 8883),
            ),
            ("mqtts://10.0.0.1:443", tls("10.0.0.1", 443)),
            ("mqtt://[::1]", tcp("::1", 1883)),
            ("mqtts://[fe80::1]:8884", tls("fe80::1", 8884)),
            ("embedded", UpstreamUrl::Embedded),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<UpstreamUrl>(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_urls_say_why() {
        let cases = [
            ("broker:1883", "missing scheme"),
            ("http://broker", "unsupported scheme"),
            ("MQTT://broker", "unsupported scheme"),
            ("mqtt://", "missing host"),
            ("mqtt://:1883", "missing host"),
            ("mqtt://broker:0", "invalid port"),
            ("mqtt://broker:65536", "invalid port"),
            ("mqtt://broker:", "invalid port"),
            ("mqtt://broker:x", "invalid port"),
            ("mqtt://broker/topic", "path"),
            ("mqtt://broker?x=1", "path"),
            ("mqtt://user:pw@broker", "credentials"),
            ("mqtt://::1", "brackets"),
            ("mqtt://[::1", "missing ']'"),
            ("mqtt://[nope]:1883", "invalid IPv6"),
            ("mqtt://[::1]1883", "':port'"),
            ("mqtt://bro ker", "invalid host"),
            ("Embedded", "missing scheme"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<UpstreamUrl>().err();
            let message = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains("expected mqtt://host[:port]"), "{message}");
        }
    }

    #[test]
    fn display_parses_back() {
        for url in [
            tcp("broker", 1883),
            tcp("::1", 1),
            UpstreamUrl::Tls {
                host: "fe80::1".to_owned(),
                port: 8883,
            },
            UpstreamUrl::Embedded,
        ] {
            assert_eq!(url.to_string().parse::<UpstreamUrl>(), Ok(url));
        }
        assert_eq!(tcp("::1", 1883).to_string(), "mqtt://[::1]:1883");
    }
}

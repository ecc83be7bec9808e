//! Writes a [`Config`] back as TOML: the effective configuration with every key spelled out, for
//! people to read (`--print-config` style) and for the loader to read back.

use std::fmt::Display;
use std::path::Path;

use super::{Config, Framing, MulticastInterface};

/// See [`Config::to_toml_string`].
pub(super) fn to_toml(config: &Config) -> String {
    let mut out = Out(String::from(
        "# Effective mqttsn-gateway configuration: every key with the value in force.\n",
    ));

    // An empty list must be written out, since an absent `[[udp]]` means the default listener.
    // As a top-level key it has to come before the first table.
    if config.udp.is_empty() {
        out.raw("udp", "[]");
    }

    let g = &config.gateway;
    out.table("[gateway]");
    out.raw("id", g.id);
    out.string("mode", g.mode.as_str());
    out.raw("max_clients", g.max_clients);
    out.raw("client_id_max_len", g.client_id_max_len);
    out.raw("max_topics_per_client", g.max_topics_per_client);
    out.raw("qos_minus1_long_topic", g.qos_minus1_long_topic);
    out.raw("advertise", g.advertise);

    for udp in &config.udp {
        out.table("[[udp]]");
        out.string("bind", &udp.bind.to_string());
        match udp.broadcast {
            Some(address) => out.string("broadcast", &address.to_string()),
            None => out.unset("broadcast", "no broadcasts"),
        }
        match &udp.multicast_interface {
            Some(MulticastInterface::Index(index)) => out.raw("multicast_interface", index),
            Some(MulticastInterface::Name(name)) => out.string("multicast_interface", name),
            None => out.unset("multicast_interface", "the system's choice"),
        }
        out.raw("max_frame", udp.max_frame);
    }

    if config.serial.is_empty() {
        out.0.push('\n');
        out.comment("no [[serial]] ports");
    }
    for serial in &config.serial {
        out.table("[[serial]]");
        out.string("port", &serial.port);
        out.raw("baud", serial.baud);
        out.raw("data_bits", serial.data_bits);
        out.string("parity", serial.parity.as_str());
        out.raw("stop_bits", serial.stop_bits);
        out.string("framing", serial.framing.as_str());
        match serial.framing {
            Framing::Raw => {}
            Framing::Slip { crc } => out.raw("slip_crc", crc),
            Framing::XbeeApi { api_mode } => out.raw("xbee_api_mode", api_mode),
        }
        match serial.max_payload {
            Some(limit) => out.raw("max_payload", limit),
            None => out.unset("max_payload", "no limit"),
        }
    }

    let u = &config.upstream;
    out.table("[upstream]");
    out.string("url", &u.url.to_string());
    out.string("embedded_bind", &u.embedded_bind.to_string());
    out.string("client_id_prefix", &u.client_id_prefix);
    out.optional("username", u.username.as_deref());
    out.secret("password", u.password.is_some());
    out.string("keep_alive", &u.keep_alive.to_string());
    out.optional_path("ca_file", u.ca_file.as_deref());
    out.optional_path("client_cert", u.client_cert.as_deref());
    out.optional_path("client_key", u.client_key.as_deref());
    out.string("reconnect_min", &u.reconnect_min.to_string());
    out.string("reconnect_max", &u.reconnect_max.to_string());
    out.raw("max_queued_bytes", u.max_queued_bytes);

    if config.predefined.is_empty() {
        out.0.push('\n');
        out.comment("no [[predefined]] topics");
    }
    for predefined in &config.predefined {
        out.table("[[predefined]]");
        out.raw("id", predefined.id);
        out.string("topic", &predefined.topic);
        match &predefined.client_id {
            Some(client_id) => out.string("client_id", client_id),
            None => out.unset("client_id", "every client"),
        }
    }

    let t = &config.timers;
    out.table("[timers]");
    out.raw(
        "keep_alive_tolerance",
        toml::Value::Float(t.keep_alive_tolerance),
    );
    out.string("t_retry", &t.t_retry.to_string());
    out.raw("n_retry", t.n_retry);
    out.string("t_adv", &t.t_adv.to_string());
    out.string("gwinfo_interval", &t.gwinfo_interval.to_string());

    let s = &config.sleep;
    out.table("[sleep]");
    out.raw("max_messages", s.max_messages);
    out.raw("max_bytes", s.max_bytes);
    out.raw("max_total_bytes", s.max_total_bytes);
    out.string("drop_policy", s.drop_policy.as_str());

    let s = &config.sessions;
    out.table("[sessions]");
    out.string("max_idle", &s.max_idle.to_string());
    out.string("expiry", &s.expiry.to_string());

    out.table("[storage]");
    match config.storage.dir.as_deref() {
        Some(dir) => out.optional_path("dir", Some(dir)),
        None => out.unset("dir", "sessions in memory only; a restart forgets them"),
    }
    out.string(
        "commit_interval",
        &config.storage.commit_interval.to_string(),
    );

    for d in &config.dtls {
        out.table("[[dtls]]");
        out.string("bind", &d.bind.to_string());
        out.optional_path("psk_file", d.psk_file.as_deref());
        out.optional_path("cert_file", d.cert_file.as_deref());
        out.optional_path("key_file", d.key_file.as_deref());
        out.optional_path("ca_file", d.ca_file.as_deref());
        out.raw("require_certificate", d.require_certificate);
        out.raw("max_associations", d.max_associations);
        out.raw("max_handshakes", d.max_handshakes);
        out.string("handshake_timeout", &d.handshake_timeout.to_string());
        out.string("idle_timeout", &d.idle_timeout.to_string());
    }

    let a = &config.auth;
    out.table("[auth]");
    out.optional_path("clients_file", a.clients_file.as_deref());
    out.optional_path("acl_file", a.acl_file.as_deref());
    if !a.acl_rules.is_empty() {
        out.raw(
            "acl_rules",
            string_array(a.acl_rules.iter().map(String::as_str)),
        );
    }
    match a.allow_anonymous {
        Some(allow) => out.raw("allow_anonymous", allow),
        None => out.unset(
            "allow_anonymous",
            if a.allows_anonymous() {
                "yes: no devices are listed"
            } else {
                "no: devices are listed"
            },
        ),
    }
    match &a.qos_minus1_from {
        Some(networks) => {
            let texts: Vec<String> = networks.iter().map(ToString::to_string).collect();
            out.raw(
                "qos_minus1_from",
                string_array(texts.iter().map(String::as_str)),
            );
        }
        None => out.unset(
            "qos_minus1_from",
            "anywhere while anonymous devices are allowed, else nowhere",
        ),
    }
    out.raw("strict", a.strict);
    for c in &a.clients {
        out.table("[[auth.client]]");
        out.string("client_id", &c.client_id);
        out.optional("psk_identity", c.psk_identity.as_deref());
        out.optional("cert_cn", c.cert_cn.as_deref());
        let networks: Vec<String> = c.networks.iter().map(ToString::to_string).collect();
        out.raw(
            "networks",
            string_array(networks.iter().map(String::as_str)),
        );
        let radios: Vec<String> = c.radios.iter().map(|r| format!("{r:016X}")).collect();
        out.raw("radio", string_array(radios.iter().map(String::as_str)));
        out.optional("username", c.username.as_deref());
        out.secret("password", c.password.is_some());
    }

    let l = &config.limits;
    out.table("[limits]");
    out.raw("frame_rate", l.frame_rate);
    out.raw("frame_burst", l.frame_burst);
    out.raw("publish_rate", l.publish_rate);
    out.raw("publish_burst", l.publish_burst);
    out.raw("max_filters_per_client", l.max_filters_per_client);
    out.raw("max_will_bytes", l.max_will_bytes);
    out.raw("verify_return_path", l.verify_return_path);
    out.raw("return_path_factor", l.return_path_factor);

    out.0
}

struct Out(String);

impl Out {
    fn table(&mut self, header: &str) {
        self.0.push('\n');
        self.0.push_str(header);
        self.0.push('\n');
    }

    /// A value whose `Display` is already TOML (numbers, booleans, TOML values).
    fn raw(&mut self, key: &str, value: impl Display) {
        self.0.push_str(&format!("{key} = {value}\n"));
    }

    fn string(&mut self, key: &str, value: &str) {
        // toml's own writer does the quoting and escaping.
        self.raw(key, toml::Value::String(value.to_owned()));
    }

    fn optional(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.string(key, value),
            None => self.comment(&format!("{key}: unset")),
        }
    }

    fn optional_path(&mut self, key: &str, value: Option<&Path>) {
        // Paths came from TOML strings, so they are UTF-8 unless built in code.
        self.optional(key, value.map(|path| path.to_string_lossy()).as_deref());
    }

    /// A password: never printed (the output of `check-config` ends up in bug reports).
    fn secret(&mut self, key: &str, set: bool) {
        if set {
            self.comment(&format!("{key}: set (not shown)"));
        } else {
            self.comment(&format!("{key}: unset"));
        }
    }

    /// An optional key that is not set, as a comment saying what that means.
    fn unset(&mut self, key: &str, meaning: &str) {
        self.comment(&format!("{key}: unset ({meaning})"));
    }

    fn comment(&mut self, text: &str) {
        self.0.push_str("# ");
        self.0.push_str(text);
        self.0.push('\n');
    }
}

/// A TOML array of strings.
fn string_array<'a>(items: impl Iterator<Item = &'a str>) -> toml::Value {
    toml::Value::Array(items.map(|i| toml::Value::String(i.to_owned())).collect())
}

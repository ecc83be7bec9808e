//! Tests of config loading and validation: the shipped `gateway.toml`, defaults, the printed
//! effective configuration, and an error with key, line and reason for every kind of mistake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mqttsn_gateway::config::{
    AuthConfig, Config, ConfigError, DropPolicy, DtlsConfig, Framing, GatewayConfig, LimitsConfig,
    Mode, MulticastInterface, Parity, PredefinedTopic, SerialConfig, SessionsConfig, SleepConfig,
    StorageConfig, TimersConfig, UdpConfig, UpstreamConfig, UpstreamUrl,
};
use mqttsn_gateway::engine::auth::DeviceEntry;
use mqttsn_gateway::time::Duration;

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn shipped_text() -> String {
    std::fs::read_to_string(manifest_path("gateway.toml")).expect("gateway.toml is readable")
}

fn load(text: &str) -> Config {
    Config::from_toml_str(text, "test.toml").unwrap_or_else(|e| panic!("{e}\n--- in:\n{text}"))
}

/// The parts of an `Invalid` error, for assertions.
#[derive(Debug)]
struct Invalid {
    line: usize,
    column: usize,
    key: String,
    message: String,
}

fn invalid(text: &str) -> Invalid {
    match Config::from_toml_str(text, "test.toml") {
        Ok(config) => panic!("accepted:\n{text}\n--- as:\n{config:#?}"),
        Err(ConfigError::Invalid {
            file,
            line,
            column,
            key,
            message,
        }) => {
            assert_eq!(file, "test.toml");
            Invalid {
                line,
                column,
                key,
                message,
            }
        }
        Err(other) => panic!("not an Invalid error: {other:?}"),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("valid socket address")
}

/// The shipped example with every commented-out setting (`#key = value`, `#[[table]]`)
/// enabled. The TLS files only apply to `mqtts://`, so the url is switched to TLS as well.
fn uncommented_example() -> String {
    let shipped = shipped_text();
    let uncommented: Vec<&str> = shipped
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => line,
        })
        .collect();
    let text = uncommented.join("\n");
    assert!(text.contains("url = \"mqtt://"));
    text.replace("url = \"mqtt://", "url = \"mqtts://")
}

const FULL: &str = r#"
[gateway]
id = 7
mode = "transparent"
max_clients = 50
client_id_max_len = 23
max_topics_per_client = 9
qos_minus1_long_topic = true
advertise = false

[[udp]]
bind = "127.0.0.1:11884"
broadcast = "224.0.0.1:1884"
multicast_interface = 2
max_frame = 600

[[udp]]
bind = "[::1]:1884"
broadcast = "[ff02::1]:1884"
multicast_interface = "lo"
max_frame = 65535

[[serial]]
port = "/dev/ttyS0"
baud = 115200
data_bits = 7
parity = "even"
stop_bits = 2
framing = "slip"
slip_crc = true
max_payload = 255

[[serial]]
port = "/dev/ttyS1"
framing = "xbee-api"
xbee_api_mode = 2

[[serial]]
port = "COM3"
parity = "odd"
framing = "raw"

[upstream]
url = "mqtts://[2001:db8::1]:8884"
embedded_bind = "[::1]:2883"
client_id_prefix = "gw1-"
username = "user"
password = 'p"ass\word'
keep_alive = 30
ca_file = "ca.pem"
client_cert = "certs/gateway.pem"
client_key = "certs/gateway.key"
reconnect_min = "500ms"
reconnect_max = "2h"
max_queued_bytes = 65536

[[predefined]]
id = 1
topic = "a/b"

[[predefined]]
id = 1
topic = "a/c"
client_id = "dev1"

[[predefined]]
id = 65534
topic = "ünïcode/topic"
client_id = "dev2"

[timers]
keep_alive_tolerance = 2
t_retry = "1500ms"
n_retry = 0
t_adv = 60
gwinfo_interval = "250ms"

[sleep]
max_messages = 1
max_bytes = 1
max_total_bytes = 5
drop_policy = "drop-newest"

[sessions]
max_idle = "90s"
expiry = "2h"

[storage]
dir = "state"
commit_interval = "25ms"

[[dtls]]
bind = "127.0.0.1:1885"
psk_file = "psk"
cert_file = "gw.pem"
key_file = "gw.key"
ca_file = "ca.pem"
require_certificate = true
max_associations = 50
max_handshakes = 5
handshake_timeout = "5s"
idle_timeout = "10m"

[auth]
clients_file = "clients.toml"
acl_file = "acl"
acl_rules = ["topic read time/#"]
allow_anonymous = true
qos_minus1_from = ["127.0.0.0/8", "fd00::/8"]
strict = true

[[auth.client]]
client_id = "sensor-1"
psk_identity = "psk-1"
cert_cn = "sensor-1.example"
networks = ["10.1.0.0/16"]
radio = ["0013A20040A1B2C3"]
username = "sensors"
password = "p4ss"

[limits]
frame_rate = 7
frame_burst = 8
publish_rate = 0
publish_burst = 1
max_filters_per_client = 3
max_will_bytes = 9
verify_return_path = false
return_path_factor = 3
"#;

/// What `FULL` must load as: every key set, none to its default.
fn full_config() -> Config {
    Config {
        gateway: GatewayConfig {
            id: 7,
            mode: Mode::Transparent,
            max_clients: 50,
            client_id_max_len: 23,
            max_topics_per_client: 9,
            qos_minus1_long_topic: true,
            advertise: false,
        },
        udp: vec![
            UdpConfig {
                bind: addr("127.0.0.1:11884"),
                broadcast: Some(addr("224.0.0.1:1884")),
                multicast_interface: Some(MulticastInterface::Index(2)),
                max_frame: 600,
            },
            UdpConfig {
                bind: addr("[::1]:1884"),
                broadcast: Some(addr("[ff02::1]:1884")),
                multicast_interface: Some(MulticastInterface::Name("lo".into())),
                max_frame: 65535,
            },
        ],
        serial: vec![
            SerialConfig {
                port: "/dev/ttyS0".into(),
                baud: 115_200,
                data_bits: 7,
                parity: Parity::Even,
                stop_bits: 2,
                framing: Framing::Slip { crc: true },
                max_payload: Some(255),
            },
            SerialConfig {
                framing: Framing::XbeeApi { api_mode: 2 },
                max_payload: Some(72),
                ..SerialConfig::new("/dev/ttyS1")
            },
            SerialConfig {
                parity: Parity::Odd,
                ..SerialConfig::new("COM3")
            },
        ],
        upstream: UpstreamConfig {
            url: UpstreamUrl::Tls {
                host: "2001:db8::1".into(),
                port: 8884,
            },
            embedded_bind: addr("[::1]:2883"),
            client_id_prefix: "gw1-".into(),
            username: Some("user".into()),
            password: Some(r#"p"ass\word"#.into()),
            keep_alive: Duration::from_secs(30),
            ca_file: Some("ca.pem".into()),
            client_cert: Some("certs/gateway.pem".into()),
            client_key: Some("certs/gateway.key".into()),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(7200),
            max_queued_bytes: 65536,
        },
        predefined: vec![
            PredefinedTopic {
                id: 1,
                topic: "a/b".into(),
                client_id: None,
            },
            PredefinedTopic {
                id: 1,
                topic: "a/c".into(),
                client_id: Some("dev1".into()),
            },
            PredefinedTopic {
                id: 65534,
                topic: "ünïcode/topic".into(),
                client_id: Some("dev2".into()),
            },
        ],
        timers: TimersConfig {
            keep_alive_tolerance: 2.0,
            t_retry: Duration::from_millis(1500),
            n_retry: 0,
            t_adv: Duration::from_secs(60),
            gwinfo_interval: Duration::from_millis(250),
        },
        sleep: SleepConfig {
            max_messages: 1,
            max_bytes: 1,
            max_total_bytes: 5,
            drop_policy: DropPolicy::DropNewest,
        },
        sessions: SessionsConfig {
            max_idle: Duration::from_secs(90),
            expiry: Duration::from_secs(7200),
        },
        limits: LimitsConfig {
            frame_rate: 7,
            frame_burst: 8,
            publish_rate: 0,
            publish_burst: 1,
            max_filters_per_client: 3,
            max_will_bytes: 9,
            verify_return_path: false,
            return_path_factor: 3,
        },
        storage: StorageConfig {
            dir: Some("state".into()),
            commit_interval: Duration::from_millis(25),
        },
        auth: AuthConfig {
            clients_file: Some("clients.toml".into()),
            clients: vec![DeviceEntry {
                client_id: "sensor-1".into(),
                psk_identity: Some("psk-1".into()),
                cert_cn: Some("sensor-1.example".into()),
                networks: vec!["10.1.0.0/16".parse().unwrap()],
                radios: vec![0x0013_A200_40A1_B2C3],
                username: Some("sensors".into()),
                password: Some("p4ss".into()),
            }],
            acl_file: Some("acl".into()),
            acl_rules: vec!["topic read time/#".into()],
            allow_anonymous: Some(true),
            qos_minus1_from: Some(vec![
                "127.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ]),
            strict: true,
        },
        dtls: vec![DtlsConfig {
            bind: "127.0.0.1:1885".parse().unwrap(),
            psk_file: Some("psk".into()),
            cert_file: Some("gw.pem".into()),
            key_file: Some("gw.key".into()),
            ca_file: Some("ca.pem".into()),
            require_certificate: true,
            max_associations: 50,
            max_handshakes: 5,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
        }],
    }
}

#[test]
fn shipped_example_loads_with_its_documented_values() {
    let config = Config::load(&manifest_path("gateway.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.gateway.id, 1);
    assert_eq!(config.gateway.mode, Mode::Aggregating);
    assert_eq!(
        config.udp,
        vec![UdpConfig {
            bind: addr("0.0.0.0:1884"),
            broadcast: Some(addr("255.255.255.255:1884")),
            multicast_interface: None,
            max_frame: 4096,
        }]
    );
    assert_eq!(config.udp[0].bind.port(), 1884);
    assert!(config.serial.is_empty());
    assert_eq!(
        config.upstream.url,
        UpstreamUrl::Tcp {
            host: "127.0.0.1".into(),
            port: 1883
        }
    );
    assert_eq!(config.upstream.username, None);
    assert_eq!(
        config.predefined,
        vec![
            PredefinedTopic {
                id: 1,
                topic: "gateway/status".into(),
                client_id: None,
            },
            PredefinedTopic {
                id: 2,
                topic: "sensors/weather-station-1/temperature".into(),
                client_id: Some("weather-station-1".into()),
            },
        ]
    );
    assert_eq!(config.timers.t_adv, Duration::from_secs(15 * 60));
    assert_eq!(config.sleep.drop_policy, DropPolicy::DropOldest);
}

#[test]
fn shipped_example_states_the_defaults() {
    // The example's comments give the defaults; its active values are those defaults wherever
    // it does not show an example of its own (broadcast address, predefined topics).
    let config = load(&shipped_text());
    let defaults = Config::default();
    assert_eq!(config.gateway, defaults.gateway);
    assert_eq!(config.udp[0].bind, defaults.udp[0].bind);
    assert_eq!(config.serial, defaults.serial);
    assert_eq!(config.upstream, defaults.upstream);
    assert_eq!(config.timers, defaults.timers);
    assert_eq!(config.sleep, defaults.sleep);
}

#[test]
fn shipped_example_loads_with_every_optional_setting_uncommented() {
    let config = load(&uncommented_example());
    assert_eq!(
        config.udp[1],
        UdpConfig {
            bind: addr("[::]:1884"),
            broadcast: Some(addr("[ff02::1]:1884")),
            multicast_interface: Some(MulticastInterface::Name("eth0".into())),
            max_frame: 1500,
        }
    );
    assert_eq!(
        config.serial,
        vec![
            SerialConfig {
                baud: 115_200,
                framing: Framing::Slip { crc: true },
                ..SerialConfig::new("/dev/ttyUSB0")
            },
            SerialConfig {
                framing: Framing::XbeeApi { api_mode: 2 },
                max_payload: Some(72),
                ..SerialConfig::new("/dev/ttyAMA0")
            },
        ]
    );
    let upstream = &config.upstream;
    assert!(upstream.url.is_tls());
    assert_eq!(upstream.username.as_deref(), Some("gateway"));
    assert_eq!(upstream.password.as_deref(), Some("change me"));
    assert_eq!(
        upstream.ca_file.as_deref(),
        Some(Path::new("/etc/mqttsn-gateway/ca.pem"))
    );
    assert!(upstream.client_cert.is_some() && upstream.client_key.is_some());
}

#[test]
fn shipped_example_mentions_every_key() {
    // The printed full configuration has every key of the schema.
    let printed = full_config().to_toml_string();
    let keys: Vec<&str> = printed
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, _)| key)
        .collect();
    assert!(keys.len() > 40, "{keys:?}");
    let shipped = shipped_text();
    for key in keys {
        let mentioned = shipped.lines().any(|line| {
            let line = line.strip_prefix('#').unwrap_or(line);
            line.starts_with(&format!("{key} = "))
        });
        assert!(mentioned, "gateway.toml does not show {key:?}");
    }
}

#[test]
fn empty_file_gives_the_defaults() {
    let config = load("");
    assert_eq!(config, Config::default());
    assert_eq!(load("# only a comment\n\n"), Config::default());
    // Empty tables too.
    let empty_tables = "[gateway]\n[upstream]\n[timers]\n[sleep]\n";
    assert_eq!(load(empty_tables), Config::default());

    assert_eq!(config.gateway.id, 1);
    assert_eq!(config.gateway.mode, Mode::Aggregating);
    assert_eq!(config.gateway.max_clients, 10_000);
    assert_eq!(config.gateway.client_id_max_len, 64);
    assert!(!config.gateway.qos_minus1_long_topic);
    assert!(config.gateway.advertise);
    assert_eq!(config.udp, vec![UdpConfig::default()]);
    assert_eq!(config.udp[0].bind, addr("0.0.0.0:1884"));
    assert!(config.serial.is_empty());
    let upstream = &config.upstream;
    assert_eq!(
        upstream.url,
        UpstreamUrl::Tcp {
            host: "127.0.0.1".into(),
            port: 1883
        }
    );
    assert_eq!(upstream.embedded_bind, addr("127.0.0.1:1883"));
    assert_eq!(upstream.client_id_prefix, "");
    assert_eq!(upstream.keep_alive, Duration::from_secs(60));
    assert_eq!(upstream.reconnect_min, Duration::from_secs(1));
    assert_eq!(upstream.reconnect_max, Duration::from_secs(60));
    assert!(upstream.username.is_none() && upstream.password.is_none());
    assert!(upstream.ca_file.is_none() && upstream.client_cert.is_none());
    assert!(config.predefined.is_empty());
    assert_eq!(config.timers.keep_alive_tolerance, 1.5);
    assert_eq!(config.timers.t_retry, Duration::from_secs(10));
    assert_eq!(config.timers.n_retry, 3);
    assert_eq!(config.timers.t_adv, Duration::from_secs(900));
    assert_eq!(config.sleep.max_messages, 100);
    assert_eq!(config.sleep.max_bytes, 65_536);
    assert_eq!(config.sleep.drop_policy, DropPolicy::DropOldest);
}

#[test]
fn every_key_is_read_into_the_typed_config() {
    assert_eq!(load(FULL), full_config());
}

#[test]
fn effective_config_round_trips() {
    let serial_only = Config {
        udp: Vec::new(),
        serial: vec![SerialConfig::new("/dev/ttyUSB0")],
        ..Config::default()
    };
    let embedded = Config {
        upstream: UpstreamConfig {
            url: UpstreamUrl::Embedded,
            ..UpstreamConfig::default()
        },
        ..Config::default()
    };
    for config in [
        Config::default(),
        load(&shipped_text()),
        load(&uncommented_example()),
        full_config(),
        serial_only,
        embedded,
    ] {
        let printed = config.to_toml_string();
        let reloaded = Config::from_toml_str(&printed, "printed.toml")
            .unwrap_or_else(|e| panic!("{e}\n--- printed:\n{printed}"));
        assert_eq!(reloaded, config.without_secrets(), "printed:\n{printed}");
    }
}

#[test]
fn effective_config_spells_out_defaults() {
    let printed = Config::default().to_toml_string();
    for line in [
        "[gateway]",
        "id = 1",
        "mode = \"aggregating\"",
        "bind = \"0.0.0.0:1884\"",
        "url = \"mqtt://127.0.0.1:1883\"",
        "keep_alive = \"1m\"",
        "keep_alive_tolerance = 1.5",
        "t_adv = \"15m\"",
        "drop_policy = \"drop-oldest\"",
        "# username: unset",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line:?} in\n{printed}");
    }
}

#[test]
fn durations_are_seconds_or_strings_with_a_unit() {
    let config = load("[timers]\nt_retry = 20\nt_adv = \"2h\"\n[upstream]\nkeep_alive = \"90s\"");
    assert_eq!(config.timers.t_retry, Duration::from_secs(20));
    assert_eq!(config.timers.t_adv, Duration::from_secs(7200));
    assert_eq!(config.upstream.keep_alive, Duration::from_secs(90));
    let config = load("[timers]\nt_retry = \"250ms\"\n[upstream]\nreconnect_max = \"5m\"");
    assert_eq!(config.timers.t_retry, Duration::from_millis(250));
    assert_eq!(config.upstream.reconnect_max, Duration::from_secs(300));
}

#[test]
fn serial_defaults_depend_on_the_framing() {
    let config = load(
        "[[serial]]\nport = \"/dev/a\"\n\
         [[serial]]\nport = \"/dev/b\"\nframing = \"slip\"\n\
         [[serial]]\nport = \"/dev/c\"\nframing = \"xbee-api\"\n\
         [[serial]]\nport = \"/dev/d\"\nframing = \"xbee-api\"\nmax_payload = 100",
    );
    let framings: Vec<_> = config
        .serial
        .iter()
        .map(|s| (s.framing, s.max_payload))
        .collect();
    assert_eq!(
        framings,
        [
            (Framing::Raw, None),
            (Framing::Slip { crc: false }, None),
            (Framing::XbeeApi { api_mode: 1 }, Some(72)),
            (Framing::XbeeApi { api_mode: 1 }, Some(100)),
        ]
    );
    assert_eq!(config.serial[0], SerialConfig::new("/dev/a"));
    assert_eq!(config.serial[0].baud, 9600);
    assert_eq!(config.serial[0].data_bits, 8);
    assert_eq!(config.serial[0].parity, Parity::None);
    assert_eq!(config.serial[0].stop_bits, 1);
    // Configuring serial ports keeps the default UDP listener unless `udp = []` says otherwise.
    assert_eq!(config.udp, vec![UdpConfig::default()]);
    assert!(load("udp = []\n[[serial]]\nport = \"/dev/a\"")
        .udp
        .is_empty());
}

#[test]
fn upstream_url_forms() {
    let url = |text: &str| load(&format!("[upstream]\nurl = \"{text}\"")).upstream.url;
    assert_eq!(url("embedded"), UpstreamUrl::Embedded);
    assert_eq!(
        url("mqtts://broker.example.com"),
        UpstreamUrl::Tls {
            host: "broker.example.com".into(),
            port: 8883
        }
    );
    assert_eq!(
        url("mqtt://[::1]"),
        UpstreamUrl::Tcp {
            host: "::1".into(),
            port: 1883
        }
    );
}

#[test]
fn unknown_keys_are_rejected_in_every_table() {
    // (file, unknown key, table key path, line, column)
    let cases = [
        ("colour = \"red\"", "colour", "", 1, 1),
        (
            "[gateway]\nid = 1\ncolour = \"red\"",
            "colour",
            "gateway",
            3,
            1,
        ),
        ("[gateway.extra]\nx = 1", "extra", "gateway", 1, 10),
        (
            "[[udp]]\nbind = \"0.0.0.0:1884\"\nport = 1",
            "port",
            "udp[0]",
            3,
            1,
        ),
        (
            "[[udp]]\nbind = \"0.0.0.0:1\"\n[[udp]]\nbind = \"0.0.0.0:2\"\n  interface = 1",
            "interface",
            "udp[1]",
            5,
            3,
        ),
        (
            "[[serial]]\nport = \"/dev/x\"\nspeed = 9600",
            "speed",
            "serial[0]",
            3,
            1,
        ),
        ("[upstream]\nhost = \"broker\"", "host", "upstream", 2, 1),
        (
            "[[predefined]]\nid = 1\ntopic = \"a\"\nqos = 1",
            "qos",
            "predefined[0]",
            4,
            1,
        ),
        ("[timers]\nt_wait = 5", "t_wait", "timers", 2, 1),
        ("[sleep]\nmax = 1", "max", "sleep", 2, 1),
    ];
    for (text, unknown, key, line, column) in cases {
        let e = invalid(text);
        assert_eq!(
            (e.key.as_str(), e.line, e.column),
            (key, line, column),
            "{text}: {e:?}"
        );
        assert!(
            e.message
                .starts_with(&format!("unknown key \"{unknown}\", expected ")),
            "{text}: {e:?}"
        );
    }
    // The expected keys are listed.
    let e = invalid("[sleep]\nmax = 1");
    assert_eq!(
        e.message,
        "unknown key \"max\", expected one of max_messages, max_bytes, max_total_bytes, drop_policy"
    );
}

#[test]
fn every_rule_has_an_error_naming_key_and_line() {
    // (file, key, line, part of the message)
    let cases: &[(&str, &str, usize, &str)] = &[
        // [gateway]
        ("[gateway]\nid = 256", "gateway.id", 2, "must be between 0 and 255, got 256"),
        (
            "[gateway]\nmode = \"bridge\"",
            "gateway.mode",
            2,
            "unknown value \"bridge\", expected \"transparent\" or \"aggregating\"",
        ),
        ("[gateway]\nmode = 1", "gateway.mode", 2, "expected a string"),
        ("[gateway]\nmax_clients = 0", "gateway.max_clients", 2, "must be at least 1, got 0"),
        (
            "[gateway]\nclient_id_max_len = 0",
            "gateway.client_id_max_len",
            2,
            "must be between 1 and 65535, got 0",
        ),
        (
            "[gateway]\nclient_id_max_len = 65536",
            "gateway.client_id_max_len",
            2,
            "must be between 1 and 65535, got 65536",
        ),
        (
            "[gateway]\nqos_minus1_long_topic = \"yes\"",
            "gateway.qos_minus1_long_topic",
            2,
            "invalid type: string \"yes\", expected a boolean",
        ),
        ("[gateway]\nid = \"one\"", "gateway.id", 2, "expected an integer"),
        ("gateway = 1", "gateway", 1, "expected a table"),
        // [[udp]]
        (
            "[[udp]]\nbind = \"1.2.3.4\"",
            "udp[0].bind",
            2,
            "invalid socket address \"1.2.3.4\" (expected e.g. 0.0.0.0:1884 or [::]:1884)",
        ),
        ("[[udp]]\nbroadcast = \"224.0.0.1:1884\"", "udp[0]", 1, "missing required key \"bind\""),
        (
            "[[udp]]\nbind = \"0.0.0.0:1884\"\n[[udp]]\nbind = \"0.0.0.0:1884\"",
            "udp[1].bind",
            4,
            "duplicate bind address 0.0.0.0:1884 (also udp[0].bind)",
        ),
        (
            "[[udp]]\nbind = \"0.0.0.0:1884\"\nbroadcast = \"255.255.255.255\"",
            "udp[0].broadcast",
            3,
            "invalid socket address \"255.255.255.255\"",
        ),
        (
            "[[udp]]\nbind = \"[::]:1884\"\nbroadcast = \"255.255.255.255:1884\"",
            "udp[0].broadcast",
            3,
            "must both be IPv4 or both IPv6",
        ),
        (
            "[[udp]]\nbind = \"[::]:1884\"\nbroadcast = \"[::1]:1884\"",
            "udp[0].broadcast",
            3,
            "IPv6 has no broadcast",
        ),
        (
            "[[udp]]\nbind = \"0.0.0.0:1884\"\nbroadcast = \"255.255.255.255:1884\"\nmulticast_interface = \"eth0\"",
            "udp[0].multicast_interface",
            4,
            "only applies with a multicast broadcast address",
        ),
        (
            "[[udp]]\nbind = \"0.0.0.0:1884\"\nmulticast_interface = 1",
            "udp[0].multicast_interface",
            3,
            "only applies with a multicast broadcast address",
        ),
        (
            "[[udp]]\nbind = \"0.0.0.0:1884\"\nbroadcast = \"224.0.0.1:1884\"\nmulticast_interface = -1",
            "udp[0].multicast_interface",
            4,
            "expected an interface name like \"eth0\" or an interface index",
        ),
        (
            "[[udp]]\nbind = \"[::]:1884\"\nbroadcast = \"[ff02::1]:1884\"\nmulticast_interface = \"\"",
            "udp[0].multicast_interface",
            4,
            "expected an interface name",
        ),
        ("udp = []", "udp", 1, "no transport left: configure at least one [[udp]], [[dtls]] or [[serial]]"),
        ("[[dtls]]\nbind = \"127.0.0.1:1885\"", "dtls[0].psk_file", 2, "a DTLS listener needs psk_file, or cert_file and key_file"),
        ("[[dtls]]\nbind = \"127.0.0.1:1885\"\ncert_file = \"c\"", "dtls[0].key_file", 2, "cert_file and key_file go together"),
        ("[[dtls]]\nbind = \"127.0.0.1:1885\"\npsk_file = \"p\"\nrequire_certificate = true", "dtls[0].require_certificate", 4, "needs ca_file"),
        ("[[dtls]]\nbind = \"nowhere\"\npsk_file = \"p\"", "dtls[0].bind", 2, "invalid socket address"),
        ("[[dtls]]\nbind = \"127.0.0.1:1885\"\npsk_file = \"p\"\nidle_timeout = \"soon\"", "dtls[0].idle_timeout", 4, "invalid duration"),
        ("[auth]\nqos_minus1_from = [\"10.0.0.0/99\"]", "auth.qos_minus1_from", 2, "the prefix length must be 0 to 32"),
        ("[udp]\nbind = \"0.0.0.0:1884\"", "udp", 1, "write [[udp]], not [udp]"),
        // [[serial]]
        ("[[serial]]\nbaud = 9600", "serial[0]", 1, "missing required key \"port\""),
        ("[[serial]]\nport = \"\"", "serial[0].port", 2, "must not be empty"),
        (
            "[[serial]]\nport = \"/dev/a\"\n[[serial]]\nport = \"/dev/a\"",
            "serial[1].port",
            4,
            "duplicate port \"/dev/a\" (also serial[0].port)",
        ),
        ("[[serial]]\nport = \"/dev/a\"\nbaud = 0", "serial[0].baud", 3, "must be between 1 and"),
        (
            "[[serial]]\nport = \"/dev/a\"\ndata_bits = 9",
            "serial[0].data_bits",
            3,
            "must be between 5 and 8, got 9",
        ),
        (
            "[[serial]]\nport = \"/dev/a\"\nparity = \"mark\"",
            "serial[0].parity",
            3,
            "unknown value \"mark\", expected one of \"none\", \"even\", \"odd\"",
        ),
        (
            "[[serial]]\nport = \"/dev/a\"\nstop_bits = 3",
            "serial[0].stop_bits",
            3,
            "must be between 1 and 2, got 3",
        ),
        (
            "[[serial]]\nport = \"/dev/a\"\nframing = \"hdlc\"",
            "serial[0].framing",
            3,
            "unknown value \"hdlc\", expected one of \"raw\", \"slip\", \"xbee-api\"",
        ),
        (
            "[[serial]]\nport = \"/dev/a\"\nslip_crc = true",
            "serial[0].slip_crc",
            3,
            "only applies with framing = \"slip\"",
        ),
        (
            "[[serial]]\nport = \"/dev/a\"\nframing = \"xbee-api\"\nslip_crc = false",
            "serial[0].slip_crc",
            4,
            "only applies with framing = \"slip\"",
        ),
        (
            "[[serial]]\nport = \"/dev/a\"\nframing = \"slip\"\nxbee_api_mode = 1",
            "serial[0].xbee_api_mode",
            4,
            "only applies with framing = \"xbee-api\"",
        ),
        (
            "[[serial]]\nport = \"/dev/a\"\nframing = \"xbee-api\"\nxbee_api_mode = 3",
            "serial[0].xbee_api_mode",
            4,
            "must be between 1 and 2, got 3",
        ),
        (
            "[[serial]]\nport = \"/dev/a\"\nmax_payload = 1",
            "serial[0].max_payload",
            3,
            "must be at least 2, got 1",
        ),
        // [upstream]
        ("[upstream]\nurl = \"http://broker\"", "upstream.url", 2, "unsupported scheme"),
        ("[upstream]\nurl = \"broker:1883\"", "upstream.url", 2, "missing scheme"),
        ("[upstream]\nurl = \"mqtt://broker:0\"", "upstream.url", 2, "invalid port"),
        (
            "[upstream]\nembedded_bind = \"localhost:1883\"",
            "upstream.embedded_bind",
            2,
            "invalid socket address \"localhost:1883\"",
        ),
        (
            "[upstream]\nkeep_alive = \"10 parsecs\"",
            "upstream.keep_alive",
            2,
            "invalid duration \"10 parsecs\": expected a duration like 10s, 500ms, 15m or 1h",
        ),
        (
            "[upstream]\nkeep_alive = true",
            "upstream.keep_alive",
            2,
            "expected a duration like 10s, 500ms, 15m or 1h",
        ),
        (
            "[upstream]\nkeep_alive = 4",
            "upstream.keep_alive",
            2,
            "must be whole seconds from 5s to 65535s, got 4s",
        ),
        (
            "[upstream]\nkeep_alive = 65536",
            "upstream.keep_alive",
            2,
            "must be whole seconds from 5s to 65535s",
        ),
        (
            "[upstream]\nkeep_alive = \"5500ms\"",
            "upstream.keep_alive",
            2,
            "must be whole seconds from 5s to 65535s, got 5500ms",
        ),
        (
            "[upstream]\npassword = \"secret\"",
            "upstream.password",
            2,
            "a password needs a username",
        ),
        (
            "[upstream]\nurl = \"mqtts://broker\"\nclient_cert = \"c.pem\"",
            "upstream.client_cert",
            3,
            "a client certificate needs its client_key",
        ),
        (
            "[upstream]\nurl = \"mqtts://broker\"\nclient_key = \"k.pem\"",
            "upstream.client_key",
            3,
            "a client key needs its client_cert",
        ),
        (
            "[upstream]\nurl = \"mqtts://broker\"\nca_file = \"\"",
            "upstream.ca_file",
            3,
            "must not be empty",
        ),
        (
            "[upstream]\nca_file = \"ca.pem\"",
            "upstream.ca_file",
            2,
            "only applies to mqtts:// urls, but url is mqtt://127.0.0.1:1883",
        ),
        (
            "[upstream]\nurl = \"embedded\"\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\"",
            "upstream.client_cert",
            3,
            "only applies to mqtts:// urls, but url is embedded",
        ),
        (
            "[upstream]\nreconnect_min = \"10s\"\nreconnect_max = \"5s\"",
            "upstream.reconnect_max",
            3,
            "must be at least reconnect_min (10s), got 5s",
        ),
        (
            "[upstream]\nreconnect_min = \"2m\"",
            "upstream.reconnect_min",
            2,
            "must be at most reconnect_max (1m), got 2m",
        ),
        (
            "[upstream]\nreconnect_min = 0",
            "upstream.reconnect_min",
            2,
            "must be more than 0s",
        ),
        // [[predefined]]
        (
            "[[predefined]]\nid = 0\ntopic = \"a\"",
            "predefined[0].id",
            2,
            "predefined topic id 0 is reserved",
        ),
        (
            "[[predefined]]\nid = 0xFFFF\ntopic = \"a\"",
            "predefined[0].id",
            2,
            "predefined topic id 65535 (0xFFFF) is reserved",
        ),
        (
            "[[predefined]]\nid = 70000\ntopic = \"a\"",
            "predefined[0].id",
            2,
            "must be between 1 and 65534, got 70000",
        ),
        (
            "[[predefined]]\nid = 5\ntopic = \"a\"\n\n[[predefined]]\nid = 5\ntopic = \"b\"",
            "predefined[1].id",
            6,
            "duplicate predefined id 5 (also predefined[0])",
        ),
        (
            "[[predefined]]\nid = 5\ntopic = \"a\"\nclient_id = \"dev1\"\n\
             [[predefined]]\nid = 5\ntopic = \"b\"\nclient_id = \"dev1\"",
            "predefined[1].id",
            6,
            "duplicate predefined id 5 for client \"dev1\"",
        ),
        (
            "[[predefined]]\nid = 1\ntopic = \"a/+/b\"",
            "predefined[0].topic",
            3,
            "topic \"a/+/b\" contains a wildcard (+ or #)",
        ),
        (
            "[[predefined]]\nid = 1\ntopic = \"a/#\"",
            "predefined[0].topic",
            3,
            "contains a wildcard",
        ),
        (
            "[[predefined]]\nid = 1\ntopic = \"\"",
            "predefined[0].topic",
            3,
            "must not be empty",
        ),
        ("[[predefined]]\nid = 1", "predefined[0]", 1, "missing required key \"topic\""),
        // [timers]
        (
            "[timers]\nkeep_alive_tolerance = 0.5",
            "timers.keep_alive_tolerance",
            2,
            "must be between 1.0 and 10.0, got 0.5",
        ),
        (
            "[timers]\nkeep_alive_tolerance = 11",
            "timers.keep_alive_tolerance",
            2,
            "must be between 1.0 and 10.0, got 11",
        ),
        (
            "[timers]\nkeep_alive_tolerance = nan",
            "timers.keep_alive_tolerance",
            2,
            "must be between 1.0 and 10.0",
        ),
        (
            "[timers]\nkeep_alive_tolerance = \"1.5\"",
            "timers.keep_alive_tolerance",
            2,
            "expected a number",
        ),
        ("[timers]\nt_retry = 0", "timers.t_retry", 2, "must be more than 0s"),
        ("[timers]\nt_retry = -1", "timers.t_retry", 2, "invalid duration -1"),
        ("[timers]\nt_retry = \"1.5s\"", "timers.t_retry", 2, "invalid duration \"1.5s\""),
        ("[timers]\nn_retry = 256", "timers.n_retry", 2, "must be between 0 and 255, got 256"),
        (
            "[timers]\nt_adv = \"500ms\"",
            "timers.t_adv",
            2,
            "must be whole seconds from 1s to 65535s, got 500ms",
        ),
        (
            "[timers]\nt_adv = \"19h\"",
            "timers.t_adv",
            2,
            "must be whole seconds from 1s to 65535s, got 19h",
        ),
        // [sleep]
        ("[sleep]\nmax_messages = 0", "sleep.max_messages", 2, "must be at least 1, got 0"),
        ("[sleep]\nmax_bytes = -5", "sleep.max_bytes", 2, "must be at least 1, got -5"),
        (
            "[sleep]\ndrop_policy = \"drop-all\"",
            "sleep.drop_policy",
            2,
            "unknown value \"drop-all\", expected \"drop-oldest\" or \"drop-newest\"",
        ),
    ];
    for &(text, key, line, message) in cases {
        let e = invalid(text);
        assert_eq!((e.key.as_str(), e.line), (key, line), "{text}\n{e:?}");
        assert!(e.message.contains(message), "{text}\n{e:?}");
        assert!(e.column >= 1, "{text}\n{e:?}");
    }
}

#[test]
fn errors_print_as_one_line_with_file_line_column_and_key() {
    let text = "[[predefined]]\nid = 1\ntopic = \"a\"\n\n[[predefined]]\nid = 0\ntopic = \"b\"\n";
    let err = Config::from_toml_str(text, "gateway.toml").expect_err("id 0 is reserved");
    assert_eq!(
        err.to_string(),
        "gateway.toml:6:6: predefined[1].id: predefined topic id 0 is reserved"
    );

    let err =
        Config::from_toml_str("[[udp]]\nbind = \"1.2.3.4\"", "gateway.toml").expect_err("no port");
    assert_eq!(
        err.to_string(),
        "gateway.toml:2:8: udp[0].bind: invalid socket address \"1.2.3.4\" \
         (expected e.g. 0.0.0.0:1884 or [::]:1884)"
    );

    let err = Config::from_toml_str("\n\n\n\n[gateway]\ncolour = 1", "gateway.toml")
        .expect_err("unknown key");
    assert_eq!(
        err.to_string(),
        "gateway.toml:6:1: gateway: unknown key \"colour\", expected one of id, mode, \
         max_clients, client_id_max_len, max_topics_per_client, qos_minus1_long_topic, advertise"
    );
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn toml_syntax_errors_have_a_line() {
    let e = invalid("[gateway]\nid = 1\nmode = aggregating\n");
    assert_eq!((e.key.as_str(), e.line, e.column), ("", 3, 8), "{e:?}");
    let e = invalid("[gateway]\nid = 1\nid = 2\n");
    assert_eq!(e.line, 3, "{e:?}");
    assert!(e.message.contains("duplicate key"), "{e:?}");
}

#[test]
fn a_bad_file_on_disk_is_named_in_the_error() {
    let path = manifest_path("tests/config/bad-predefined.toml");
    let err = Config::load(&path).expect_err("id 0 is reserved");
    assert!(matches!(
        &err,
        ConfigError::Invalid { line: 8, key, .. } if key == "predefined[1].id"
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "{}:8:6: predefined[1].id: predefined topic id 0 is reserved",
            path.display()
        )
    );
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let path = manifest_path("tests/config/does-not-exist.toml");
    let err = Config::load(&path).expect_err("no such file");
    assert!(matches!(&err, ConfigError::Io { file, .. } if *file == path));
    assert!(err
        .to_string()
        .starts_with(&format!("cannot read {}: ", path.display())));
}

#[test]
fn hil_example_configs_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hil/configs");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = mqttsn_gateway::config::Config::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(config.serial.len(), 1, "{}", path.display());
            loaded += 1;
        }
    }
    assert_eq!(loaded, 3);
}

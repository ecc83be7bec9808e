//! Tests of the transcript format, parser and replay harness.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mqttsn_gateway::time::{Duration, Instant};
use mqttsn_gateway::transcript::replay::{
    replay, replay_file_with, Difference, ReplayError, ReplayInput, ReplayMode, ReplayOutcome,
    ReplayOutput, Replayable,
};
use mqttsn_gateway::transcript::{
    Control, Direction, Entry, FramePattern, Payload, Peer, PeerKind, Transcript,
    TranscriptErrorKind, TranscriptWriter,
};
use proptest::prelude::*;

const EXAMPLE: &str = r#"# comment lines start with '#'
@peer dev1 udp 10.0.0.7:50000
@peer dev2 udp [fd00::7]:40000
@peer node1 serial /dev/ttyUSB0 0013A20040A1B2C3:FFFE   # radio source address
@peer n5 udp 10.0.0.9:1884 via-forwarder 0005           # node behind a forwarder
@peer brk broker                                        # the shared upstream connection
@peer brk-dev1 broker dev1                              # dev1's own upstream connection
@config gateway.mode = "transparent"                     # a comment after a TOML value
@config topics.note = "has # inside"
0.000   dev1 > gw   08 04 04 01 00 3C 73 31     # CONNECT "s1" keep-alive 60
0.000   gw > dev1   03 05 00                    # CONNACK accepted
0.200   gw > brk    30 0B 00 03 61 2F 62 68 69 21 21 21 21
0.250   brk > gw    40 02 00 01
0.3     n5>gw       05 FE 00 00 05 02 16
12      gw > dev1   07 0B ?? ?? 00 01 00        # '??' = a byte that may vary
12.5    node1 > gw  0x02 0x16
@end 30.000
"#;

fn ms(millis: u64) -> Instant {
    Instant::from_millis(millis)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test addresses are valid")
}

fn parse(text: &str) -> Transcript {
    match Transcript::parse(text, "test.snlog") {
        Ok(t) => t,
        Err(e) => panic!("should parse, but: {e}\n{text}"),
    }
}

fn parse_error(text: &str) -> String {
    match Transcript::parse(text, "test.snlog") {
        Ok(t) => panic!("should not parse, but gave {t:?}"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------- parsing

#[test]
fn parses_every_feature_of_the_format() {
    let t = parse(EXAMPLE);
    let kinds: Vec<&PeerKind> = t.peers.iter().map(|p| &p.kind).collect();
    assert_eq!(
        kinds,
        [
            &PeerKind::Udp(addr("10.0.0.7:50000")),
            &PeerKind::Udp(addr("[fd00::7]:40000")),
            &PeerKind::Serial {
                port: "/dev/ttyUSB0".into(),
                radio: Some(vec![
                    0x00, 0x13, 0xA2, 0x00, 0x40, 0xA1, 0xB2, 0xC3, 0xFF, 0xFE
                ]),
            },
            &PeerKind::Forwarded {
                via: addr("10.0.0.9:1884"),
                node_id: vec![0x00, 0x05],
            },
            &PeerKind::Broker { client: None },
            &PeerKind::Broker {
                client: Some("dev1".into()),
            },
        ]
    );
    assert_eq!(
        t.config,
        [
            ("gateway.mode".to_string(), "\"transparent\"".to_string()),
            ("topics.note".to_string(), "\"has # inside\"".to_string()),
        ]
    );
    assert_eq!(
        t.config_toml(),
        "gateway.mode = \"transparent\"\ntopics.note = \"has # inside\"\n"
    );
    assert_eq!(t.end, Some(ms(30_000)));
    assert_eq!(t.tolerance, None);
    assert_eq!(t.entries.len(), 7);

    let connect = &t.entries[0];
    assert_eq!(connect.at, ms(0));
    assert_eq!(
        connect.direction,
        Direction::Input {
            from: "dev1".into()
        }
    );
    assert_eq!(
        connect.exact_bytes(),
        Some(vec![0x08, 0x04, 0x04, 0x01, 0x00, 0x3C, 0x73, 0x31])
    );
    assert_eq!(
        connect.comment.as_deref(),
        Some("CONNECT \"s1\" keep-alive 60")
    );
    assert_eq!(connect.line, 10);

    assert_eq!(
        t.entries[2].direction,
        Direction::Output { to: "brk".into() }
    );
    assert_eq!(t.entries[2].comment, None);
    assert_eq!(t.entries[4].at, ms(300));
    assert_eq!(t.entries[4].peer(), "n5");

    let regack = &t.entries[5];
    assert_eq!(regack.at, ms(12_000));
    assert_eq!(regack.exact_bytes(), None);
    assert_eq!(
        regack.payload,
        Payload::Frame(FramePattern::from_positions(vec![
            Some(7),
            Some(0x0B),
            None,
            None,
            Some(0),
            Some(1),
            Some(0)
        ]))
    );
    assert!(regack
        .frame()
        .is_some_and(|p| p.matches(&[7, 0x0B, 0xAB, 0xCD, 0, 1, 0])));
    assert_eq!(t.entries[6].exact_bytes(), Some(vec![0x02, 0x16]));
    assert_eq!(t.entries[6].at, ms(12_500));
    assert_eq!(t.inputs().count(), 4);
    assert_eq!(t.expected_outputs().count(), 3);
}

#[test]
fn accepts_crlf_a_byte_order_mark_and_a_tolerance() {
    let t = parse("\u{feff}@peer a udp 1.2.3.4:5\r\n@tolerance 0.05\r\n1 a > gw 02 16\r\n");
    assert_eq!(t.tolerance, Some(Duration::from_millis(50)));
    assert_eq!(t.entries[0].exact_bytes(), Some(vec![2, 0x16]));
}

#[test]
fn errors_say_where_and_what_was_expected() {
    let peers = "@peer dev1 udp 10.0.0.7:50000\n@peer brk broker\n";
    let cases: &[(&str, &str)] = &[
        (
            "1.000 dev9 > gw 02 16",
            "test.snlog:3:7: unknown peer \"dev9\" (declared peers: dev1, brk)",
        ),
        (
            "2.000 dev1 > gw 02 16\n1.000 dev1 > gw 02 16",
            "test.snlog:4:1: time 1.000 goes backwards (line 3 is at 2.000)",
        ),
        (
            "1.000 dev1 > gw 02 1G",
            "test.snlog:3:21: bad frame byte \"1G\": 'G' is not a hex digit",
        ),
        (
            "1.000 dev1 > gw 02 164",
            "test.snlog:3:20: bad frame byte \"164\": odd number",
        ),
        (
            "1.000 dev1 > gw 02 ???",
            "test.snlog:3:20: bad frame byte \"???\"",
        ),
        (
            "1.000 dev1 > brk 02 16",
            "test.snlog:3:7: neither side of `dev1 > brk` is gw",
        ),
        ("1.000 gw > gw 02 16", "test.snlog:3:7: both sides are gw"),
        (
            "1.000 dev1 > gw 02 ??",
            "test.snlog:3:20: wildcard `??` in a frame sent to the gateway",
        ),
        (
            "1.000 dev1 > gw",
            "test.snlog:3:16: no frame bytes after `dev1 > gw`",
        ),
        (
            "1.000 dev1 gw 02 16",
            "test.snlog:3:7: expected `FROM > TO` after the time",
        ),
        (
            "1.0000 dev1 > gw 02 16",
            "test.snlog:3:1: bad time \"1.0000\": more precise than a millisecond",
        ),
        (
            "dev1 > gw 02 16",
            "test.snlog:3:1: expected a frame line `TIME FROM > TO BYTES`",
        ),
        (
            "@peer dev1 udp 10.0.0.8:1",
            "test.snlog:3:7: peer \"dev1\" is already declared on line 1",
        ),
        (
            "@peer dev3 udp 10.0.0.7:50000",
            "test.snlog:3:7: peer \"dev3\" has the same address as peer \"dev1\" (line 1)",
        ),
        (
            "@peer other broker",
            "test.snlog:3:7: peer \"other\" has the same address as peer \"brk\"",
        ),
        (
            "@peer gw udp 10.0.0.8:1",
            "test.snlog:3:7: bad peer name \"gw\"",
        ),
        (
            "@peer dev3 tcp 10.0.0.8:1",
            "test.snlog:3:12: bad @peer: unknown kind \"tcp\"",
        ),
        (
            "@peer dev3 udp 10.0.0.8",
            "test.snlog:3:16: bad @peer: \"10.0.0.8\" is not a socket address",
        ),
        (
            "@peer dev3 udp 10.0.0.8:1 extra",
            "test.snlog:3:27: bad @peer: unexpected \"extra\"",
        ),
        (
            "@peer n1 udp 10.0.0.8:1 via-forwarder",
            "bad @peer: no node id after via-forwarder",
        ),
        (
            "@peer n1 udp 10.0.0.8:1 via-forwarder 0G",
            "bad @peer: node id \"0G\" is not hex bytes",
        ),
        (
            "@peer b2 broker dev9",
            "bad @peer: \"dev9\" is not a declared device peer (declared: dev1)",
        ),
        (
            "@peer b2 broker brk",
            "bad @peer: \"brk\" is not a declared device peer",
        ),
        (
            "@peers dev3 udp 10.0.0.8:1",
            "test.snlog:3:1: unknown directive \"@peers\"",
        ),
        (
            "@config gateway.mode",
            "bad @config: no `=`; expected `@config KEY = VALUE`",
        ),
        (
            "@config gateway.mode = transparent",
            "bad @config: \"transparent\" is not one TOML value",
        ),
        (
            "@config a..b = 1",
            "bad @config: \"a..b\" is not a dotted key",
        ),
        (
            "@config a = 1\n@config a = 2",
            "test.snlog:4:9: @config key \"a\" is already set on line 3",
        ),
        (
            "@end 1\n@end 2",
            "test.snlog:4: @end is already given on line 3",
        ),
        ("@end soon", "test.snlog:3:6: bad @end: bad time \"soon\""),
        ("@tolerance", "test.snlog:3: bad @tolerance: no time"),
        (
            "5 dev1 > gw 02 16\n@end 4",
            "test.snlog:4: @end 4.000 is before the last frame at 5.000 (line 3)",
        ),
    ];
    for (body, expected) in cases {
        let message = parse_error(&format!("{peers}{body}\n"));
        assert!(
            message.starts_with(expected)
                || (!expected.starts_with("test.snlog") && message.contains(expected)),
            "for {body:?}\n  got:      {message}\n  expected: {expected}"
        );
    }
}

#[test]
fn errors_are_typed() {
    let err = Transcript::parse("@peer a udp 1.2.3.4:5\n1 b > gw 01", "x")
        .expect_err("b is not declared");
    assert_eq!(err.line, 2);
    assert_eq!(err.column, Some(3));
    assert_eq!(
        err.kind,
        TranscriptErrorKind::UnknownPeer {
            name: "b".into(),
            declared: vec!["a".into()]
        }
    );
    let err = Transcript::parse("1 b > gw 01", "x").expect_err("nothing is declared");
    assert!(err.to_string().contains("(declared peers: none)"), "{err}");
}

const CONTROLS: &str = "\
@peer dev1 udp 10.0.0.7:50000
@peer brk broker
@peer brk-dev1 broker dev1
0.000 gw > brk !open   # at start
0.020 brk > gw !up
0.020 gw > brk 10 02 00 00
1 brk-dev1>gw !down#dropped
1 gw > brk-dev1 !close
2 gw > brk   !abort
3 gw>brk-dev1 !open
";

#[test]
fn control_entries_parse_and_round_trip() {
    let t = parse(CONTROLS);
    let expected = [
        Entry::output_control(ms(0), "brk", Control::Open).with_comment("at start"),
        Entry::input_control(ms(20), "brk", Control::Up),
        Entry::output(ms(20), "brk", &[0x10, 2, 0, 0]),
        Entry::input_control(ms(1_000), "brk-dev1", Control::Down).with_comment("dropped"),
        Entry::output_control(ms(1_000), "brk-dev1", Control::Close),
        Entry::output_control(ms(2_000), "brk", Control::Abort),
        Entry::output_control(ms(3_000), "brk-dev1", Control::Open),
    ];
    assert_eq!(t.entries, expected);
    assert_eq!(t.entries[0].line, 4);
    assert_eq!(t.entries[0].exact_bytes(), None);
    assert_eq!(t.entries[0].frame(), None);
    assert_eq!(t.entries[1].payload, Payload::Control(Control::Up));
    assert_eq!(t.entries[2].control(), None);
    assert_eq!(t.inputs().count(), 2);
    assert_eq!(t.expected_outputs().count(), 5);

    let text = t.to_string();
    assert_eq!(parse(&text), t, "canonical text:\n{text}");
    assert_eq!(
        parse(&text).to_string(),
        text,
        "canonical text is a fixed point"
    );
    assert!(
        text.contains("\n0.000     gw > brk       !open  # at start\n"),
        "{text}"
    );
    assert!(
        text.contains("\n1.000     brk-dev1 > gw  !down  # dropped\n"),
        "{text}"
    );
    assert!(
        text.contains("\n2.000     gw > brk       !abort\n"),
        "{text}"
    );

    let mut w = TranscriptWriter::new(Vec::new());
    for peer in &t.peers {
        w.write_peer(peer).expect("vec");
    }
    for entry in &t.entries {
        w.write_entry(entry).expect("vec");
    }
    let streamed = String::from_utf8(w.into_inner()).expect("utf-8");
    assert!(
        streamed.contains("\n0.020     brk > gw       !up\n"),
        "{streamed}"
    );
    assert_eq!(parse(&streamed), t, "{streamed}");
}

#[test]
fn control_entry_errors_say_what_is_allowed() {
    let peers = "@peer dev1 udp 10.0.0.7:50000\n@peer brk broker\n@peer s serial /dev/ttyS0\n";
    let cases: &[(&str, &str)] = &[
        (
            "1 dev1 > gw !up",
            "test.snlog:4:13: control entry `!up` for \"dev1\", a udp peer; control entries are only for broker peers (`@peer NAME broker [CLIENT]`)",
        ),
        (
            "1 gw > s !open # no",
            "test.snlog:4:10: control entry `!open` for \"s\", a serial peer",
        ),
        (
            "1 brk > gw !up 02 16",
            "test.snlog:4:16: unexpected \"02 16\" after `!up`; a control entry has no bytes (only a trailing `# comment`)",
        ),
        (
            "1 brk > gw !up # fine\n2 gw > brk !close !abort",
            "test.snlog:5:19: unexpected \"!abort\" after `!close`",
        ),
        (
            "1 brk > gw !open",
            "test.snlog:4:12: `!open` cannot go `brk > gw`: `!up` and `!down` are inputs (BROKER > gw), `!open`, `!close` and `!abort` outputs (gw > BROKER)",
        ),
        ("1 gw > brk !down", "test.snlog:4:12: `!down` cannot go `gw > brk`"),
        (
            "1 brk > gw !reset",
            "test.snlog:4:12: unknown control entry \"!reset\"; expected `!up` or `!down` (BROKER > gw) or `!open`, `!close` or `!abort` (gw > BROKER)",
        ),
        ("1 brk > gw !", "test.snlog:4:12: unknown control entry \"!\""),
        (
            "1 brk > gw 02 !up",
            "test.snlog:4:15: bad frame byte \"!up\": a control entry (`!up`, `!open`, ...) stands alone, without bytes",
        ),
        (
            "2 brk > gw !up\n1 gw > brk !open",
            "test.snlog:5:1: time 1.000 goes backwards (line 4 is at 2.000)",
        ),
    ];
    for (body, expected) in cases {
        let message = parse_error(&format!("{peers}{body}\n"));
        assert!(
            message.starts_with(expected),
            "for {body:?}\n  got:      {message}\n  expected: {expected}"
        );
    }
    let err = Transcript::parse("@peer a udp 1.2.3.4:5\n1 a > gw !down", "x")
        .expect_err("a is not a broker");
    assert_eq!(
        err.kind,
        TranscriptErrorKind::ControlNotOnBroker {
            control: Control::Down,
            peer: "a".into(),
            kind: "udp",
        }
    );
    let err = Transcript::parse("@peer b broker\n1 b > gw !up 01", "x")
        .expect_err("bytes after a control");
    assert_eq!(
        err.kind,
        TranscriptErrorKind::BytesAfterControl {
            control: Control::Up,
            found: "01".into(),
        }
    );
}

// ---------------------------------------------------------------------------------- writing

#[test]
fn canonical_text_round_trips() {
    let t = parse(EXAMPLE);
    let text = t.to_string();
    let again = parse(&text);
    assert_eq!(again, t, "canonical text:\n{text}");
    assert_eq!(again.to_string(), text, "canonical text is a fixed point");
    // Columns line up: every frame's direction starts at the same column, and so does every
    // comment (frames up to 16 bytes).
    let frames: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(char::is_numeric))
        .collect();
    assert!(frames.iter().all(|l| l.find(" > ").is_some()));
    let direction_columns: Vec<usize> = frames
        .iter()
        .map(|l| l.find(|c: char| c.is_alphabetic()).unwrap_or(0))
        .collect();
    assert!(direction_columns.windows(2).all(|w| w[0] == w[1]), "{text}");
    let comment_columns: Vec<usize> = frames.iter().filter_map(|l| l.find('#')).collect();
    assert_eq!(comment_columns.len(), 3);
    assert!(comment_columns.windows(2).all(|w| w[0] == w[1]), "{text}");
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "no trailing spaces:\n{text}"
    );
    assert!(text.contains("@peer node1 serial /dev/ttyUSB0 0013A20040A1B2C3:FFFE\n"));
    assert!(text.contains("@peer n5 udp 10.0.0.9:1884 via-forwarder 0005\n"));
    assert!(text.contains("@peer brk-dev1 broker dev1\n"));
    assert!(text.ends_with("@end 30.000\n"));
}

#[test]
fn streaming_writer_output_parses_back() {
    let dev = Peer {
        name: "dev1".into(),
        kind: PeerKind::Udp(addr("127.0.0.1:40000")),
        identity: None,
    };
    let long = Peer {
        name: "a-much-longer-name".into(),
        kind: PeerKind::Serial {
            port: "/dev/ttyAMA0".into(),
            radio: None,
        },
        identity: None,
    };
    let entries = vec![
        Entry::input(ms(0), "dev1", &[8, 4, 4, 1, 0, 0x3C, 0x73, 0x31])
            .with_comment("CONNECT \"s1\""),
        Entry::output(ms(1), "dev1", &[3, 5, 0]).with_comment("CONNACK"),
        Entry::input(ms(2_500), "a-much-longer-name", &[2, 0x16]),
        Entry::output(ms(2_500), "a-much-longer-name", &[2, 0x17]).with_comment("PINGRESP"),
    ];
    let mut w = TranscriptWriter::new(Vec::new());
    w.write_comment("recorded by a test\n\nsecond line")
        .expect("vec");
    w.write_peer(&dev).expect("vec");
    w.write_config("gateway.id", "7").expect("vec");
    w.write_tolerance(Duration::from_millis(20)).expect("vec");
    w.write_blank_line().expect("vec");
    w.write_entry(&entries[0]).expect("vec");
    w.write_entry(&entries[1]).expect("vec");
    w.write_peer(&long).expect("vec");
    w.write_entry(&entries[2]).expect("vec");
    w.write_entry(&entries[3]).expect("vec");
    w.write_end(ms(60_000)).expect("vec");
    w.flush().expect("vec");
    let text = String::from_utf8(w.into_inner()).expect("utf-8");
    assert!(text
        .starts_with("# recorded by a test\n#\n# second line\n@peer dev1 udp 127.0.0.1:40000\n"));
    assert!(
        text.contains("\n0.000     dev1 > gw  08 04 04 01 00 3C 73 31"),
        "{text}"
    );
    let t = parse(&text);
    assert_eq!(t.peers, [dev, long]);
    assert_eq!(t.entries, entries);
    assert_eq!(t.config, [("gateway.id".to_string(), "7".to_string())]);
    assert_eq!(t.tolerance, Some(Duration::from_millis(20)));
    assert_eq!(t.end, Some(ms(60_000)));
}

// ------------------------------------------------------------------ robustness (fuzz-ish)

fn peer_strategy(index: usize) -> impl Strategy<Value = Peer> {
    let name = format!("p{index}");
    let port = 1000 + index as u16;
    prop_oneof![
        Just(PeerKind::Udp(SocketAddr::from(([10, 0, 0, 1], port)))),
        Just(PeerKind::Udp(SocketAddr::from((
            [0xfd00, 0, 0, 0, 0, 0, 0, 7],
            port
        )))),
        proptest::collection::vec(any::<u8>(), 1..4).prop_map(move |node_id| PeerKind::Forwarded {
            via: SocketAddr::from(([10, 0, 0, 2], port)),
            node_id,
        }),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..11)).prop_map(
            move |radio| {
                PeerKind::Serial {
                    port: format!("/dev/tty{index}"),
                    radio,
                }
            }
        ),
    ]
    .prop_map(move |kind| Peer {
        name: name.clone(),
        kind,
        identity: None,
    })
}

fn transcript_strategy() -> impl Strategy<Value = Transcript> {
    let peers = (1usize..4).prop_flat_map(|n| (0..n).map(peer_strategy).collect::<Vec<_>>());
    let entry = (
        0u64..5_000,
        any::<bool>(),
        0usize..8,
        0usize..6,
        proptest::collection::vec(proptest::option::weighted(0.9, any::<u8>()), 1..40),
        proptest::option::of("[a-zA-Z0-9 #\"=?>@.-]{0,24}"),
    );
    (
        peers,
        proptest::collection::vec(entry, 0..30),
        proptest::option::of(0u64..1000),
    )
        .prop_map(|(mut peers, raw_entries, end_extra)| {
            peers.push(Peer {
                name: "brk".into(),
                kind: PeerKind::Broker { client: None },
                identity: None,
            });
            let mut at = 0;
            let entries: Vec<Entry> = raw_entries
                .into_iter()
                .map(|(step, input, peer, control, positions, comment)| {
                    at += step;
                    let peer = &peers[peer % peers.len()];
                    let is_broker = matches!(peer.kind, PeerKind::Broker { .. });
                    let name = peer.name.clone();
                    let direction = if input {
                        Direction::Input { from: name }
                    } else {
                        Direction::Output { to: name }
                    };
                    let positions = if input {
                        positions
                            .into_iter()
                            .map(|b| Some(b.unwrap_or(0)))
                            .collect()
                    } else {
                        positions
                    };
                    // Half of the broker's entries are control entries of the right direction.
                    let payload = match (is_broker && control < 3, input) {
                        (true, true) => Payload::Control([Control::Up, Control::Down][control % 2]),
                        (true, false) => Payload::Control(
                            [Control::Open, Control::Close, Control::Abort][control],
                        ),
                        (false, _) => Payload::Frame(FramePattern::from_positions(positions)),
                    };
                    let comment = comment
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty());
                    Entry {
                        at: Instant::from_millis(at),
                        direction,
                        payload,
                        comment,
                        line: 0,
                    }
                })
                .collect();
            Transcript {
                peers,
                config: vec![("gateway.id".into(), "1".into())],
                entries,
                end: end_extra.map(|e| Instant::from_millis(at + e)),
                tolerance: None,
            }
        })
}

proptest! {
    #[test]
    fn generated_transcripts_round_trip(t in transcript_strategy()) {
        let text = t.to_string();
        let back = Transcript::parse(&text, "generated");
        prop_assert_eq!(back, Ok(t), "{}", text);
    }

    #[test]
    fn random_text_never_panics(text in "[ -~\t\n]{0,200}") {
        let _ = Transcript::parse(&text, "random");
    }

    #[test]
    fn random_unicode_never_panics(text in "\\PC{0,120}") {
        let _ = Transcript::parse(&text, "random");
    }

    #[test]
    fn mutated_lines_never_panic(
        line in 0usize..20,
        at in 0usize..80,
        insert in "[ -~é\u{0}]{0,4}",
        delete in 0usize..6,
    ) {
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        let index = line % lines.len();
        let mut chars: Vec<char> = lines[index].chars().collect();
        let at = at.min(chars.len());
        let end = (at + delete).min(chars.len());
        chars.splice(at..end, insert.chars());
        let mutated: String = chars.into_iter().collect();
        let mut all: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        all[index] = mutated;
        let _ = Transcript::parse(&all.join("\n"), "mutated");
    }
}

// ---------------------------------------------------------------------------------- fixtures

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn snlog_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            snlog_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "snlog") {
            out.push(path);
        }
    }
}

/// The MQTT-SN length field agrees with the frame's size (the one check this format-level test
/// can make without the codec; the codec's own fixture test goes further).
fn length_is_consistent(bytes: &[u8]) -> bool {
    match bytes {
        [1, hi, lo, ..] => usize::from(*hi) << 8 | usize::from(*lo) == bytes.len(),
        [len, ..] => usize::from(*len) == bytes.len(),
        [] => false,
    }
}

#[test]
fn every_fixture_parses_and_its_frames_are_framed() {
    let mut files = Vec::new();
    snlog_files(&fixtures_dir(), &mut files);
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for required in [
        "mqtt-sn-12-session.snlog",
        "mqttsn-session.snlog",
        "spec-vectors.snlog",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "missing fixture {required}: {names:?}"
        );
    }
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable fixture");
        let t =
            Transcript::parse(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.entries.is_empty(), "{}: no frames", path.display());
        for entry in &t.entries {
            let Some(peer) = t.peer(entry.peer()) else {
                panic!(
                    "{}:{}: parser let an unknown peer through",
                    path.display(),
                    entry.line
                )
            };
            if matches!(peer.kind, PeerKind::Broker { .. }) {
                continue; // MQTT, not MQTT-SN
            }
            let Some(bytes) = entry.exact_bytes() else {
                continue;
            };
            if is_malformed(entry) {
                continue; // deliberately broken input (see fixture_frames)
            }
            let inner = match &peer.kind {
                PeerKind::Forwarded { node_id, .. } => {
                    // Len FE Ctrl NodeId... | inner message; Len covers the header only.
                    let header = 3 + node_id.len();
                    assert!(
                        bytes.len() > header,
                        "{}:{}: short encapsulation",
                        path.display(),
                        entry.line
                    );
                    assert_eq!(
                        usize::from(bytes[0]),
                        header,
                        "{}:{}",
                        path.display(),
                        entry.line
                    );
                    assert_eq!(bytes[1], 0xFE, "{}:{}", path.display(), entry.line);
                    assert_eq!(
                        &bytes[3..header],
                        node_id.as_slice(),
                        "{}:{}",
                        path.display(),
                        entry.line
                    );
                    bytes[header..].to_vec()
                }
                _ => bytes,
            };
            assert!(
                length_is_consistent(&inner),
                "{}:{}: length field disagrees with the frame size",
                path.display(),
                entry.line
            );
        }
    }
}

// ---------------------------------------------------------------------------------- replay

const ADVERTISE: [u8; 5] = [0x05, 0x00, 0x01, 0x03, 0x84];

/// MQTT CONNECT, client id "gw", keep-alive 60, clean session.
const MQTT_CONNECT: [u8; 16] = [
    0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x02, b'g', b'w',
];

/// A stand-in for the engine: answers PINGREQ `02 16` with PINGRESP to the sender (or with
/// whatever `reply` says, `copies` times) and sends ADVERTISE to the broadcast address every
/// 900 s from 900 s on. A broker connection reporting `!up` gets an MQTT CONNECT; one reporting
/// `!down` is opened again (`!open`).
struct FakeGateway {
    broadcast: PeerKind,
    next_advertise: Instant,
    reply: Vec<u8>,
    copies: usize,
    out: VecDeque<(PeerKind, ReplayOutput)>,
    /// Times the harness called each entry point, to check it walks time as documented.
    calls: Vec<(char, Instant)>,
}

impl FakeGateway {
    fn new() -> Self {
        FakeGateway {
            broadcast: PeerKind::Udp(addr("255.255.255.255:1883")),
            next_advertise: ms(900_000),
            reply: vec![0x02, 0x17],
            copies: 1,
            out: VecDeque::new(),
            calls: Vec::new(),
        }
    }

    /// One that asks for `broker` to be opened as it starts (before any input).
    fn opening(broker: PeerKind) -> Self {
        let mut engine = FakeGateway::new();
        engine
            .out
            .push_back((broker, ReplayOutput::Control(Control::Open)));
        engine
    }
}

impl Replayable for FakeGateway {
    fn input(&mut self, now: Instant, from: &Peer, input: ReplayInput<'_>) {
        self.calls.push(('i', now));
        let kind = from.kind.clone();
        match input {
            ReplayInput::Frame(bytes) if bytes == [0x02, 0x16] => {
                for _ in 0..self.copies {
                    self.out
                        .push_back((kind.clone(), ReplayOutput::Frame(self.reply.clone())));
                }
            }
            ReplayInput::Frame(_) => {}
            ReplayInput::Control(Control::Up) => {
                self.out.push_back((kind, MQTT_CONNECT.to_vec().into()));
            }
            ReplayInput::Control(Control::Down) => {
                self.out.push_back((kind, Control::Open.into()));
            }
            ReplayInput::Control(other) => panic!("{other} is not an input"),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.calls.push(('t', now));
        while self.next_advertise <= now {
            self.out
                .push_back((self.broadcast.clone(), ADVERTISE.to_vec().into()));
            self.next_advertise = self.next_advertise + Duration::from_secs(900);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_advertise)
    }

    fn poll_output(&mut self) -> Option<(PeerKind, ReplayOutput)> {
        self.out.pop_front()
    }
}

const SESSION: &str = "\
# a device pings, the gateway advertises every 15 minutes
@peer dev1 udp 10.0.0.7:50000
@peer all udp 255.255.255.255:1883
@tolerance 0

0.000     dev1 > gw   02 16   # PINGREQ
0.000     gw > dev1   02 17   # PINGRESP
# quiet for a while
900.000   gw > all    05 00 01 03 84   # ADVERTISE
1000.5    dev1 > gw   02 16
1000.5    gw > dev1   02 ??
1800      gw > all    05 00 01 03 84
";

fn mismatch_of(text: &str, engine: &mut FakeGateway) -> (Difference, String) {
    match replay(&parse(text), engine) {
        Ok(()) => panic!("replay should not pass:\n{text}"),
        Err(m) => (m.difference.clone(), m.to_string()),
    }
}

#[test]
fn replay_passes_and_fires_timers_between_inputs() {
    let mut engine = FakeGateway::new();
    replay(&parse(SESSION), &mut engine).unwrap_or_else(|m| panic!("{m}"));
    // The ADVERTISE at 900 fires before the input at 1000.5, with the deadline as `now`; the
    // one at 1800 fires after the last input because the last line is at 1800.
    assert_eq!(
        engine.calls,
        [
            ('i', ms(0)),
            ('t', ms(900_000)),
            ('i', ms(1_000_500)),
            ('t', ms(1_800_000))
        ]
    );
}

#[test]
fn replay_fires_timers_up_to_end() {
    let text = format!("{SESSION}@end 2700\n");
    let (difference, report) = mismatch_of(&text, &mut FakeGateway::new());
    let Difference::Extra { after_line, actual } = difference else {
        panic!("expected an extra output: {report}")
    };
    assert_eq!(after_line, 12);
    assert_eq!(actual.at, ms(2_700_000));
    assert_eq!(actual.to, "all");
    assert!(
        report.contains("after line 12: an output that no line expects"),
        "{report}"
    );
    // With the third ADVERTISE expected, it passes.
    let text = format!("{SESSION}2700  gw > all  05 00 01 03 84\n@end 3000\n");
    replay(&parse(&text), &mut FakeGateway::new()).unwrap_or_else(|m| panic!("{m}"));
}

#[test]
fn replay_reports_a_different_output_with_line_and_both_frames() {
    let mut engine = FakeGateway::new();
    engine.reply = vec![0x02, 0x17, 0x00];
    let (difference, report) = mismatch_of(SESSION, &mut engine);
    let Difference::Different { line, .. } = difference else {
        panic!("{report}")
    };
    assert_eq!(line, 7);
    let head = "\
line 7: the gateway's output differs from the expected one: 3 bytes instead of 2
  expected: 0.000     gw > dev1  02 17
  actual:   0.000     gw > dev1  02 17 00
                                       ^^
";
    assert!(report.starts_with(head), "{report}");
    // The whole actual transcript follows, ready to paste: it parses, and replays cleanly
    // against the engine that produced it.
    let (_, pasted) = report
        .split_once("to rewrite the expected lines):\n")
        .unwrap_or_else(|| panic!("{report}"));
    let mut again = FakeGateway::new();
    again.reply = vec![0x02, 0x17, 0x00];
    replay(&parse(pasted), &mut again).unwrap_or_else(|m| panic!("{m}"));
    assert!(
        pasted.contains("\n0.000     gw > dev1  02 17 00\n"),
        "{pasted}"
    );
    // A matched line keeps its comment.
    assert!(
        pasted.contains("\n900.000   gw > all   05 00 01 03 84  # ADVERTISE\n"),
        "{pasted}"
    );
}

#[test]
fn replay_points_at_the_differing_byte() {
    let mut engine = FakeGateway::new();
    engine.reply = vec![0x02, 0x18];
    let text = "@peer dev1 udp 10.0.0.7:50000\n1 dev1 > gw 02 16\n1 gw > dev1 02 17 # PINGRESP\n";
    let (_, report) = mismatch_of(text, &mut engine);
    let expected = "\
line 3: the gateway's output differs from the expected one: byte 1 differs
  expected: 1.000     gw > dev1  02 17
  actual:   1.000     gw > dev1  02 18
                                    ^^
";
    assert!(report.starts_with(expected), "{report}");
}

#[test]
fn replay_reports_wrong_peer_and_wrong_time() {
    let text =
        "@peer dev1 udp 10.0.0.7:50000\n@peer all udp 255.255.255.255:1883\n@tolerance 0.5\n\
                0 dev1 > gw 02 16\n0 gw > all 02 17\n";
    let (_, report) = mismatch_of(text, &mut FakeGateway::new());
    assert!(report.starts_with("line 5: the gateway's output differs from the expected one: sent to dev1 instead of all"), "{report}");

    let text =
        "@peer dev1 udp 10.0.0.7:50000\n@peer all udp 255.255.255.255:1883\n@tolerance 0.5\n\
                0 dev1 > gw 02 16\n0 gw > dev1 02 17\n900.6 gw > all 05 00 01 03 84\n";
    let (_, report) = mismatch_of(text, &mut FakeGateway::new());
    assert!(report.starts_with("line 6: the gateway's output differs from the expected one: sent at 900.000 instead of 900.600 (tolerance 0.500)"), "{report}");
    // Within the tolerance it passes.
    let text = text.replace("900.6", "900.5");
    replay(&parse(&text), &mut FakeGateway::new()).unwrap_or_else(|m| panic!("{m}"));
}

#[test]
fn replay_reports_a_missing_output() {
    let mut engine = FakeGateway::new();
    engine.reply = Vec::new();
    engine.copies = 0;
    let (difference, report) = mismatch_of(SESSION, &mut engine);
    // The ADVERTISEs still line up with their lines: the PINGRESP is what is missing.
    assert!(
        matches!(difference, Difference::Missing { line: 7, .. }),
        "{report}"
    );
    let text = "@peer dev1 udp 10.0.0.7:50000\n1 dev1 > gw 01 16\n1 gw > dev1 02 17 # PINGRESP\n";
    let (difference, report) = mismatch_of(text, &mut FakeGateway::new());
    assert!(
        matches!(difference, Difference::Missing { line: 3, .. }),
        "{report}"
    );
    assert!(
        report.starts_with(
            "line 3: this expected output never came\n  expected: 1.000     gw > dev1  02 17\n"
        ),
        "{report}"
    );
}

#[test]
fn replay_reports_an_extra_output() {
    let mut engine = FakeGateway::new();
    engine.copies = 2;
    let text = "@peer dev1 udp 10.0.0.7:50000\n1 dev1 > gw 02 16\n1 gw > dev1 02 17\n";
    let (difference, report) = mismatch_of(text, &mut engine);
    assert!(
        matches!(difference, Difference::Extra { after_line: 3, .. }),
        "{report}"
    );
    assert!(
        report.contains("  actual:   1.000     gw > dev1  02 17\n"),
        "{report}"
    );
    assert!(
        report.ends_with("1.000     gw > dev1  02 17\n1.000     gw > dev1  02 17\n"),
        "{report}"
    );
}

#[test]
fn replay_names_undeclared_destinations() {
    let text = "@peer dev1 udp 10.0.0.7:50000\n@end 900\n";
    let (difference, report) = mismatch_of(text, &mut FakeGateway::new());
    let Difference::Extra { actual, .. } = difference else {
        panic!("{report}")
    };
    assert_eq!(actual.to, "undeclared1");
    assert!(
        report.contains("@peer undeclared1 udp 255.255.255.255:1883\n"),
        "{report}"
    );
}

/// An engine whose timer never moves on: the replay must still end.
struct StuckTimer;

impl Replayable for StuckTimer {
    fn input(&mut self, _: Instant, _: &Peer, _: ReplayInput<'_>) {}
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_timeout(&self) -> Option<Instant> {
        Some(Instant::from_millis(5))
    }
    fn poll_output(&mut self) -> Option<(PeerKind, ReplayOutput)> {
        None
    }
}

#[test]
fn replay_stops_a_runaway_engine() {
    let t = parse("@peer dev1 udp 10.0.0.7:50000\n1 dev1 > gw 02 16\n");
    let Err(m) = replay(&t, &mut StuckTimer) else {
        panic!("a stuck timer cannot pass")
    };
    assert!(
        matches!(m.difference, Difference::Runaway { at, .. } if at == ms(5)),
        "{m}"
    );
    assert!(
        m.to_string()
            .starts_with("at 0.005: the engine asked for a timer at the same instant without end"),
        "{m}"
    );
}

#[test]
fn replay_feeds_inputs_from_every_kind_of_peer() {
    let mut engine = FakeGateway::new();
    let text = "\
@peer n5 udp 10.0.0.9:1884 via-forwarder 0005
@peer s serial /dev/ttyUSB0 0013A20040A1B2C3:FFFE
@peer brk broker
1 s > gw 02 16
1 gw > s 02 17
2 n5 > gw 02 16
2 gw > n5 02 17
3 brk > gw 02 16
3 gw > brk 02 17
";
    replay(&parse(text), &mut engine).unwrap_or_else(|m| panic!("{m}"));
}

const UPSTREAM: &str = "\
@peer dev1 udp 10.0.0.7:50000
@peer brk broker
@tolerance 0

0.000     gw > brk    !open   # at start, before any input
5.000     brk > gw    !up
5.000     gw > brk    10 0E 00 04 4D 51 54 54 04 02 00 3C 00 02 67 77   # CONNECT
6.000     dev1 > gw   02 16
6.000     gw > dev1   02 17
7.000     brk > gw    !down   # dropped
7.000     gw > brk    !open   # reconnect
";

fn shared_broker() -> PeerKind {
    PeerKind::Broker { client: None }
}

#[test]
fn replay_feeds_and_expects_control_entries() {
    let mut engine = FakeGateway::opening(shared_broker());
    replay(&parse(UPSTREAM), &mut engine).unwrap_or_else(|m| panic!("{m}"));
    assert_eq!(
        engine.calls,
        [('i', ms(5_000)), ('i', ms(6_000)), ('i', ms(7_000))]
    );
}

#[test]
fn replay_reports_control_entries_like_frames() {
    // A different control.
    let text = UPSTREAM.replace(
        "7.000     gw > brk    !open",
        "7.000     gw > brk    !abort",
    );
    let (difference, report) = mismatch_of(&text, &mut FakeGateway::opening(shared_broker()));
    assert!(
        matches!(difference, Difference::Different { line: 11, .. }),
        "{report}"
    );
    let head = "\
line 11: the gateway's output differs from the expected one: `!open` instead of `!abort`
  expected: 7.000     gw > brk  !abort
  actual:   7.000     gw > brk  !open

actual transcript";
    assert!(report.starts_with(head), "{report}");
    // The pasted transcript declares what happened, and replays cleanly.
    let (_, pasted) = report
        .split_once("to rewrite the expected lines):\n")
        .unwrap_or_else(|| panic!("{report}"));
    // A matched control keeps its comment.
    assert!(
        pasted
            .lines()
            .any(|l| l.starts_with("0.000     gw > brk   !open  ")
                && l.ends_with("  # at start, before any input")),
        "{pasted}"
    );
    assert!(
        pasted.ends_with("\n7.000     gw > brk   !open\n"),
        "{pasted}"
    );
    replay(&parse(pasted), &mut FakeGateway::opening(shared_broker()))
        .unwrap_or_else(|m| panic!("{m}"));

    // A frame where a control is expected.
    let text = UPSTREAM.replace(
        "5.000     gw > brk    10 0E 00 04 4D 51 54 54 04 02 00 3C 00 02 67 77",
        "5.000     gw > brk    !close",
    );
    let (_, report) = mismatch_of(&text, &mut FakeGateway::opening(shared_broker()));
    assert!(
        report.starts_with("line 7: the gateway's output differs from the expected one: a frame instead of `!close`\n  expected: 5.000     gw > brk  !close\n  actual:   5.000     gw > brk  10 0E 00 04"),
        "{report}"
    );

    // A control that never came: the engine does not open the connection as it starts.
    let (difference, report) = mismatch_of(UPSTREAM, &mut FakeGateway::new());
    assert!(
        matches!(difference, Difference::Missing { line: 5, .. }),
        "{report}"
    );
    assert!(
        report.starts_with(
            "line 5: this expected output never came\n  expected: 0.000     gw > brk  !open\n"
        ),
        "{report}"
    );

    // A control that no line expects.
    let text = UPSTREAM.replace("7.000     gw > brk    !open   # reconnect\n", "");
    let (difference, report) = mismatch_of(&text, &mut FakeGateway::opening(shared_broker()));
    assert!(
        matches!(difference, Difference::Extra { after_line: 10, .. }),
        "{report}"
    );
    assert!(
        report.starts_with(
            "after line 10: an output that no line expects\n  actual:   7.000     gw > brk  !open\n"
        ),
        "{report}"
    );
}

#[test]
fn replay_names_undeclared_broker_connections() {
    let text = "@peer dev1 udp 10.0.0.7:50000\n1 dev1 > gw 02 16\n1 gw > dev1 02 17\n";
    let per_client = || {
        FakeGateway::opening(PeerKind::Broker {
            client: Some("dev1".into()),
        })
    };
    let (difference, report) = mismatch_of(text, &mut per_client());
    let Difference::Extra { actual, .. } = difference else {
        panic!("{report}")
    };
    assert_eq!(actual.to, "broker1");
    assert_eq!(actual.output, ReplayOutput::Control(Control::Open));
    assert_eq!(actual.at, ms(0));
    assert!(report.contains("\n@peer broker1 broker dev1\n"), "{report}");

    // Blessing declares it and puts the output before the first input.
    let file = TempFile::new("bless-broker", text);
    let outcome = replay_file_with(&file.0, ReplayMode::Bless, |_| per_client());
    assert_eq!(outcome.expect("bless works"), ReplayOutcome::Blessed);
    assert_eq!(
        file.read(),
        "@peer dev1 udp 10.0.0.7:50000\n@peer broker1 broker dev1\n0.000     gw > broker1  !open\n1 dev1 > gw 02 16\n1 gw > dev1 02 17\n"
    );
}

// ---------------------------------------------------------------------------------- blessing

/// A copy of `text` in a fresh directory under the system temp dir.
struct TempFile(PathBuf);

impl TempFile {
    fn new(test: &str, text: &str) -> Self {
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "mqttsn-transcript-{test}-{}-{unique}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("fixture.snlog");
        std::fs::write(&path, text).expect("write temp fixture");
        TempFile(path)
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.0).expect("read temp fixture")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

const TO_BLESS: &str = "\
# header comment
@peer dev1 udp 10.0.0.7:50000
@peer all udp 255.255.255.255:1883
@config gateway.id = 1   # kept

0.000     dev1 > gw   02 16   # PINGREQ
0.000     gw > dev1   03 17 00   # a wrong expectation
# between
1000.500  dev1 > gw   02 16
1000.500  gw > dev1   02 ??      # kept as written
@end 1000.5
";

#[test]
fn bless_rewrites_expected_lines_and_keeps_the_rest() {
    let file = TempFile::new("bless", TO_BLESS);
    let check = replay_file_with(&file.0, ReplayMode::Check, |_| FakeGateway::new());
    let Err(ReplayError::Mismatch { mismatch, .. }) = check else {
        panic!("check mode must fail: {check:?}")
    };
    assert!(
        matches!(mismatch.difference, Difference::Different { line: 7, .. }),
        "{mismatch}"
    );
    assert_eq!(file.read(), TO_BLESS, "check mode leaves the file alone");

    let outcome = replay_file_with(&file.0, ReplayMode::Bless, |t| {
        assert_eq!(t.config_toml(), "gateway.id = 1\n");
        FakeGateway::new()
    });
    assert_eq!(outcome.expect("bless works"), ReplayOutcome::Blessed);
    let expected = "\
# header comment
@peer dev1 udp 10.0.0.7:50000
@peer all udp 255.255.255.255:1883
@config gateway.id = 1   # kept

0.000     dev1 > gw   02 16   # PINGREQ
0.000     gw > dev1  02 17
900.000   gw > all   05 00 01 03 84
# between
1000.500  dev1 > gw   02 16
1000.500  gw > dev1   02 ??      # kept as written
@end 1000.5
";
    assert_eq!(file.read(), expected);
    let again = replay_file_with(&file.0, ReplayMode::Check, |_| FakeGateway::new());
    assert_eq!(again.expect("blessed file passes"), ReplayOutcome::Passed);
}

#[test]
fn bless_declares_undeclared_destinations() {
    let file = TempFile::new("bless-peers", "# no peers yet\n@end 900\n");
    let outcome = replay_file_with(&file.0, ReplayMode::Bless, |_| FakeGateway::new());
    assert_eq!(outcome.expect("bless works"), ReplayOutcome::Blessed);
    assert_eq!(
        file.read(),
        "# no peers yet\n@end 900\n@peer undeclared1 udp 255.255.255.255:1883\n900.000   gw > undeclared1  05 00 01 03 84\n"
    );
}

#[test]
fn bless_refuses_an_engine_that_changes_between_runs() {
    let file = TempFile::new(
        "bless-unstable",
        "@peer dev1 udp 10.0.0.7:50000\n1 dev1 > gw 02 16\n",
    );
    let mut runs = 0;
    let outcome = replay_file_with(&file.0, ReplayMode::Bless, |_| {
        runs += 1;
        let mut engine = FakeGateway::new();
        engine.reply = vec![0x02, 0x17, runs];
        engine
    });
    let Err(ReplayError::Bless { reason, .. }) = outcome else {
        panic!("unstable output cannot be blessed: {outcome:?}")
    };
    assert!(reason.contains("a second run differs"), "{reason}");
    assert_eq!(
        file.read(),
        "@peer dev1 udp 10.0.0.7:50000\n1 dev1 > gw 02 16\n"
    );
}

#[test]
fn file_errors_name_the_file() {
    let missing = std::env::temp_dir().join("mqttsn-transcript-does-not-exist.snlog");
    let err = replay_file_with(&missing, ReplayMode::Check, |_| FakeGateway::new())
        .expect_err("no such file");
    assert!(err.to_string().starts_with("cannot read "), "{err}");
    let file = TempFile::new("bad", "@peer dev1 udp 10.0.0.7:50000\nx\n");
    let err = replay_file_with(&file.0, ReplayMode::Bless, |_| FakeGateway::new())
        .expect_err("does not parse");
    assert!(err.to_string().ends_with("fixture.snlog:2:1: expected a frame line `TIME FROM > TO BYTES`, a directive (`@...`) or a comment (`#...`), found \"x\""), "{err}");
}

/// Whether a fixture line is marked as deliberately malformed input (comment `# malformed: ...`).
fn is_malformed(entry: &mqttsn_gateway::transcript::Entry) -> bool {
    entry
        .comment
        .as_deref()
        .is_some_and(|c| c.trim_start().starts_with("malformed"))
}

//! The engine must stay a pure state machine: no tokio, no sockets, no clock, no randomness.
//! This scans its sources so that a stray import fails the build's tests, not a review.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.display().to_string(), text));
        }
    }
}

#[test]
fn engine_uses_no_tokio_sockets_or_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() >= 5);
    let forbidden = [
        "tokio",
        "std::net::UdpSocket",
        "std::net::TcpStream",
        "TcpListener",
        "SystemTime",
        "std::time::Instant",
        "Instant::now",
        "thread::sleep",
        "rand::",
        "mio::",
    ];
    let mut found = Vec::new();
    for (path, text) in &files {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                if code.contains(word) {
                    found.push(format!("{path}:{}: {word}", n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "impure engine code:\n{}",
        found.join("\n")
    );
}

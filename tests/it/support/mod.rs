//! Test support for runs against real components: a Mosquitto broker started on a free
//! loopback port, an MQTT subscriber (rumqttc) on the broker side, and MQTT-SN devices speaking
//! over real UDP sockets.

pub mod device;
pub mod mosquitto;
pub mod mqtt;
pub mod process;

use std::time::Duration;

/// Sends SIGTERM to `child` and waits for it to exit (a clean stop, as systemd asks for one).
pub fn terminate(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Upper bound for anything a test waits for; reaching it is a failure, not a synchronisation.
pub const PATIENCE: Duration = Duration::from_secs(15);

//! Recordings of gateway traffic: the project's transcript format (`snlog`, written by
//! `--record`) and pcap files that standard tools open (Wireshark/tshark), written by [`pcap`]
//! and read back into transcripts by [`pcap_reader`] for the `replay` subcommand.

pub mod pcap;
pub mod pcap_reader;
mod pcap_sink;
pub mod redact;
pub mod snlog;

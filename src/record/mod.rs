//! Recordings of gateway traffic: the project's transcript format (`snlog`, written by
//! `--record`) and pcap files that standard tools open (Wireshark/tshark).

pub mod pcap;
mod pcap_sink;
pub mod snlog;

//! Fuzz target: any byte string decodes to a frame or an error, never a panic; whatever decodes
//! re-encodes to bytes that decode to the same frame. Run: `cargo fuzz run decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttsn_codec::{DecodeOptions, Frame};

fuzz_target!(|data: &[u8]| {
    for long_topic in [false, true] {
        let opts = DecodeOptions {
            qos_minus1_long_topic: long_topic,
        };
        if let Ok(frame) = Frame::decode_with(data, &opts) {
            let wire = frame.to_vec().expect("a decoded frame always fits");
            assert_eq!(Frame::decode_with(&wire, &opts), Ok(frame));
            let _ = frame.to_string();
        }
    }
});

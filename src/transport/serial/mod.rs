//! Serial radios and UART bridges: the `[[serial]]` ports, with a pure framing module per line
//! format (raw, SLIP, XBee API).

pub mod framing;
pub mod port;

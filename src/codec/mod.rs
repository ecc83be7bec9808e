//! MQTT-SN v1.2 wire format.

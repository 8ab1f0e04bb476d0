#![no_main]
//! A hostile guest's virtio-net transmit chain: parsing never panics and
//! never touches memory outside the guest's.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ember::devices::virtio::fuzz::net_tx(data);
});

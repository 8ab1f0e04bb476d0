#![no_main]
//! A hostile guest's virtio-blk descriptor chain: parsing never panics and
//! never touches memory outside the guest's.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ember::devices::virtio::fuzz::block_request(data);
});

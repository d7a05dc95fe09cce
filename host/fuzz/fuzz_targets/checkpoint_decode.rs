//! `checkpoint::decode` on any bytes: no panic, and what it accepts encodes back to the same
//! header and data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskhost::checkpoint::{decode, encode};

fuzz_target!(|bytes: &[u8]| {
    if let Ok((header, data)) = decode(bytes) {
        let again = decode(&encode(&header, data.as_deref())).expect("an encoded object decodes");
        assert_eq!(again, (header, data));
    }
});

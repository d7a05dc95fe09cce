//! `Manifest::decode` on any bytes: no panic, and what it accepts encodes back to the same
//! manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskhost::files::Manifest;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(manifest) = Manifest::decode(bytes) {
        let again = Manifest::decode(&manifest.encode()).expect("an encoded manifest decodes");
        assert_eq!(again, manifest);
    }
});

//! A stored manifest record, whatever the disk gives back: [`Manifest::decode`] never panics,
//! and what it accepts encodes back to a record that decodes to the same manifest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelfs::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::decode(data) else { return };
    let again = Manifest::decode(&m.encode()).expect("a re-encoded manifest decodes");
    assert_eq!(again, m);
});

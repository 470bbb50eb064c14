//! A safetensors header, whatever the Hub serves: [`parse`] never panics; what it accepts is a
//! layout that keeps the documented invariants and needs no more than its own header bytes;
//! and `NeedMore(n)` always asks for more than was given and no more than the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelfs::formats::safetensors::parse;
use modelfs::formats::FormatError;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    // The input as the whole file, and as the start of a bigger one.
    for size in [len, len + 4096, u64::MAX] {
        match parse(data, size) {
            Ok(layout) => {
                if let Err(e) = layout.check(size) {
                    panic!("{e}: {layout:?}");
                }
                let header = &data[..layout.header_len as usize];
                assert_eq!(parse(header, size), Ok(layout));
            }
            Err(FormatError::NeedMore(n)) => assert!(n > len && n <= size, "NeedMore({n})"),
            Err(FormatError::Malformed { format, .. }) => assert_eq!(format, "safetensors"),
        }
    }
});

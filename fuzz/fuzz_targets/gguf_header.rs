//! A GGUF header, whatever the Hub serves: [`parse`] never panics; what it accepts is a layout
//! that keeps the documented invariants and is found again from the first `header_len` bytes;
//! `NeedMore(n)` always asks for more than was given, within the file and `MAX_HEADER`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelfs::formats::gguf::{parse, MAX_HEADER};
use modelfs::formats::FormatError;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    for size in [len, len + 4096, u64::MAX] {
        match parse(data, size) {
            Ok(layout) => {
                if let Err(e) = layout.check(size) {
                    panic!("{e}: {layout:?}");
                }
                let header = &data[..layout.header_len.min(len) as usize];
                assert_eq!(parse(header, size), Ok(layout));
            }
            Err(FormatError::NeedMore(n)) => {
                assert!(n > len && n <= size && n <= MAX_HEADER, "NeedMore({n})")
            }
            Err(FormatError::Malformed { format, .. }) => assert_eq!(format, "gguf"),
        }
    }
});

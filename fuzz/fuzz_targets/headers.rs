//! The response headers a hostile Hub or CDN controls and modelfs parses: `Content-Range`
//! (which decides whether bytes are accepted) and `Link` (which decides the next page to
//! fetch). Nothing panics; what is accepted is exactly what the header says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelfs::hub::client::{next_page, parse_content_range, parse_link_next};
use reqwest::header::{HeaderMap, HeaderValue, LINK};
use reqwest::Url;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some((first, last, total)) = parse_content_range(s) {
            assert!(first <= last, "{s:?}");
            assert!(total.is_none_or(|t| last < t), "{s:?}");
            let total_text = total.map_or("*".to_owned(), |t| t.to_string());
            let canonical = format!("bytes {first}-{last}/{total_text}");
            assert_eq!(parse_content_range(&canonical), Some((first, last, total)));
        }
        if let Some(target) = parse_link_next(s) {
            assert!(!target.contains('>'), "{s:?}");
            assert!(s.contains(&format!("<{target}>")), "{s:?}");
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(LINK, value);
        let base = Url::parse("https://hub.test/api/models/o/r/tree/main?recursive=true")
            .expect("constant URL");
        if let Ok(Some(next)) = next_page(&headers, &base) {
            assert!(matches!(next.scheme(), "http" | "https"), "{next}");
        }
    }
});

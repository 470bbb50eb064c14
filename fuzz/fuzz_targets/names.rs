//! Name and path validation on arbitrary strings: whatever [`modelfs::names`] accepts is safe
//! to use as a path component (names, revisions) or as a path inside the repo's directory.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelfs::names::{
    is_commit, parse_repo_component, valid_org, valid_repo, valid_repo_path, valid_revision,
    MAX_COMPONENT_LEN, MAX_NAME_LEN, MAX_REPO_PATH_LEN, MAX_REVISION_LEN,
};

fn safe_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && !c.contains('/') && !c.contains('\0')
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if valid_repo_path(s) {
        assert!(!s.starts_with('/') && !s.ends_with('/'), "{s:?}");
        assert!(!s.contains("//") && !s.contains('\0'), "{s:?}");
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert!(s.len() <= MAX_REPO_PATH_LEN);
        assert!(s.split('/').all(|c| safe_component(c) && c.len() <= MAX_COMPONENT_LEN), "{s:?}");
        // Joined under a directory, it stays under that directory.
        let joined = std::path::Path::new("/models/o/r/all").join(s);
        assert!(joined.starts_with("/models/o/r/all"));
        assert!(joined
            .components()
            .all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))));
    }
    for valid in [valid_org(s), valid_repo(s)] {
        if valid {
            assert!(safe_component(s) && s.len() <= MAX_NAME_LEN, "{s:?}");
            assert!(s.is_ascii() && !s.contains("..") && !s.contains('@'), "{s:?}");
        }
    }
    if valid_revision(s) {
        assert!(safe_component(s) && s.len() <= MAX_REVISION_LEN, "{s:?}");
        assert!(!s.chars().any(char::is_control) && !s.contains(".."), "{s:?}");
    }
    if is_commit(s) {
        assert!(valid_revision(s), "{s:?}");
    }
    if let Some((name, rev)) = parse_repo_component(s) {
        assert!(valid_repo(name) && safe_component(s), "{s:?}");
        match rev {
            Some(rev) => {
                assert!(valid_revision(rev));
                assert_eq!(format!("{name}@{rev}"), s);
            }
            None => assert_eq!(name, s),
        }
    }
});

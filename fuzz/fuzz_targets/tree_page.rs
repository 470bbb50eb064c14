//! A tree page from a hostile Hub, through everything that decides what a repo shows:
//! [`parse_tree_page`] then [`Manifest::build`]. Whatever the bytes, nothing panics, and every
//! path kept is one that can only name a file inside the repo's directory.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use modelfs::hub::client::{parse_tree_page, MAX_FILE_SIZE};
use modelfs::manifest::{FileEntry, Manifest, RepoId};
use modelfs::names::{valid_repo_path, MAX_COMPONENT_LEN, MAX_REPO_PATH_LEN};

fuzz_target!(|data: &[u8]| {
    let repo = RepoId::new("org", "repo");
    let Ok(entries) = parse_tree_page(data, &repo) else { return };
    for e in &entries {
        assert!(valid_repo_path(&e.path), "parse_tree_page kept {:?}", e.path);
        assert!(e.size <= MAX_FILE_SIZE, "{}: size {}", e.path, e.size);
    }
    let files: Vec<FileEntry> = entries
        .into_iter()
        .map(|e| FileEntry { path: e.path, size: e.size, hash: e.hash })
        .collect();
    let m = Manifest::build(repo, "0".repeat(40), None, files);
    for pair in m.files.windows(2) {
        assert!(pair[0].path < pair[1].path, "not sorted and unique: {:?}", pair);
    }
    let paths: HashSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    for f in &m.files {
        let p = f.path.as_str();
        assert!(valid_repo_path(p), "{p:?}");
        assert!(!p.is_empty() && !p.starts_with('/') && !p.ends_with('/'), "{p:?}");
        assert!(!p.contains("//") && !p.contains('\0'), "{p:?}");
        assert!(p.len() <= MAX_REPO_PATH_LEN, "{} bytes", p.len());
        for component in p.split('/') {
            assert!(component != "." && component != "..", "{p:?}");
            assert!(component.len() <= MAX_COMPONENT_LEN, "{p:?}");
        }
        // No file is also a directory of another file.
        for (i, _) in p.match_indices('/') {
            assert!(!paths.contains(&p[..i]), "{:?} is a file and a directory", &p[..i]);
        }
        assert_eq!(m.file(p).map(|e| &e.path), Some(&f.path));
    }
});

//! Inode numbers and what they stand for.
//!
//! An inode number is derived from the node's identity (its path, and for anything inside a
//! repo the commit it shows), so the same path at the same commit gets the same number in
//! every mount, and a path whose branch moved to a new commit gets a new number: the kernel
//! can then cache attributes and pages of every content inode for as long as it likes,
//! because what an inode shows never changes.
//!
//! Nodes are kept for the life of the mount (the kernel's `forget` is not acted on): the table
//! grows with the number of distinct paths looked up, which for model repos is small.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use super::hfcache::HfNode;
use super::snapshot::{Snapshot, ViewKind};
use crate::manifest::RepoId;

pub const ROOT_INO: u64 = 1;

/// What an inode stands for.
#[derive(Clone, Debug)]
pub enum Node {
    Root,
    Org {
        org: String,
    },
    /// `/<org>/<repo>` or `/<org>/<repo>@<rev>`: what it shows is resolved when needed.
    Repo {
        repo: RepoId,
        rev: Option<String>,
    },
    /// `/<org>/<repo>/<view>` and directories inside it, at one snapshot. `dir` indexes the
    /// view's directories (0 is the view's root). `repo_ino` is the repo node it hangs off.
    Dir {
        repo_ino: u64,
        snap: Arc<Snapshot>,
        view: ViewKind,
        dir: usize,
    },
    /// A file, at one snapshot. `file` indexes the manifest's files.
    File {
        repo_ino: u64,
        snap: Arc<Snapshot>,
        file: usize,
    },
    /// `/.hf-cache` and what it has above a commit ([`super::hfcache`]); from
    /// `snapshots/<commit>` down, its nodes are `Dir` and `File`.
    HfCache(HfNode),
}

impl Node {
    pub fn is_dir(&self) -> bool {
        match self {
            Node::File { .. } => false,
            Node::HfCache(node) => !node.is_file(),
            _ => true,
        }
    }
}

#[derive(Default)]
pub struct InodeTable {
    inner: RwLock<Tables>,
}

#[derive(Default)]
struct Tables {
    by_ino: HashMap<u64, Arc<Node>>,
    by_key: HashMap<String, u64>,
}

impl InodeTable {
    pub fn new() -> Self {
        let table = Self::default();
        table.write().by_ino.insert(ROOT_INO, Arc::new(Node::Root));
        table
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.read().by_ino.get(&ino).cloned()
    }

    /// The node interned under `key`, if it was.
    pub fn get_key(&self, key: &str) -> Option<Arc<Node>> {
        let t = self.read();
        t.by_key.get(key).and_then(|ino| t.by_ino.get(ino).cloned())
    }

    /// The inode for `key`, creating it with `make` the first time. `key` must identify the
    /// node completely (two keys never name one node, one key never names two).
    pub fn intern(&self, key: String, make: impl FnOnce() -> Node) -> (u64, Arc<Node>) {
        {
            // One guard for both maps: taking a second read lock while holding the first
            // deadlocks as soon as a writer queues between them.
            let t = self.read();
            if let Some(node) =
                t.by_key.get(&key).and_then(|ino| t.by_ino.get(ino).map(|n| (*ino, n)))
            {
                return (node.0, node.1.clone());
            }
        }
        let mut t = self.write();
        if let Some(&ino) = t.by_key.get(&key) {
            if let Some(node) = t.by_ino.get(&ino) {
                return (ino, node.clone());
            }
        }
        // Probe past collisions (and the reserved numbers) deterministically, so a mount
        // that sees the same keys in the same order assigns the same numbers.
        let mut salt = 0u32;
        let ino = loop {
            let candidate = hash_ino(&key, salt);
            if !t.by_ino.contains_key(&candidate) {
                break candidate;
            }
            salt += 1;
        };
        let node = Arc::new(make());
        t.by_ino.insert(ino, node.clone());
        t.by_key.insert(key, ino);
        (ino, node)
    }

    /// Every inode whose node `pred` picks (a scan: for rare events, such as a file found bad).
    pub fn find(&self, pred: impl Fn(&Node) -> bool) -> Vec<u64> {
        self.read().by_ino.iter().filter(|(_, n)| pred(n)).map(|(ino, _)| *ino).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// 63 bits of sha256 of the key, never 0 or [`ROOT_INO`]. sha256 rather than `std`'s hasher
/// because its output is fixed forever, so inode numbers survive upgrades of the toolchain.
fn hash_ino(key: &str, salt: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(salt.to_le_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let ino = u64::from_le_bytes(first) >> 1;
    if ino <= ROOT_INO {
        ino + 2
    } else {
        ino
    }
}

/// Keys. Components are separated by `\0`, which no valid name contains.
pub fn org_key(org: &str) -> String {
    format!("o\0{org}")
}

pub fn repo_key(repo: &RepoId, rev: Option<&str>) -> String {
    format!("r\0{}\0{}\0{}", repo.org, repo.name, rev.unwrap_or(""))
}

/// The root of one view of a repo node at one commit. `spelled` is the name as looked up:
/// quant lookups are case-insensitive, and two spellings must not share a directory inode
/// (the kernel does not allow a directory to have two names).
pub fn view_key(repo_ino: u64, commit: &str, spelled: &str) -> String {
    format!("v\0{repo_ino}\0{commit}\0{spelled}")
}

/// A directory or file named `name` inside the directory inode `parent`. The parent's number
/// already pins repo, commit and view, so the pair identifies the node.
pub fn child_key(parent: u64, name: &str) -> String {
    format!("c\0{parent}\0{name}")
}

/// A node of the huggingface_hub cache view (`kind`: `root`, `repo`, `refs`, `ref`,
/// `snapshots`, `snapshot`), identified by `parts`: org and repo name, then for a ref its name
/// and the commit it resolved to, for a snapshot its commit. A ref's commit is in its key
/// because it is the ref's content: a moved branch is a new inode, as below a view.
pub fn hf_key(kind: &str, parts: &[&str]) -> String {
    let mut key = format!("h\0{kind}");
    for part in parts {
        key.push('\0');
        key.push_str(part);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_is_stable_and_distinct() {
        let t = InodeTable::new();
        let (a, _) = t.intern(org_key("org"), || Node::Org { org: "org".into() });
        let (b, _) = t.intern(org_key("org"), || unreachable!("interned twice"));
        let (c, _) = t.intern(org_key("other"), || Node::Org { org: "other".into() });
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a > ROOT_INO && c > ROOT_INO);
        // Same key in a fresh table: same number (stable across mounts).
        let t2 = InodeTable::new();
        assert_eq!(t2.intern(org_key("org"), || Node::Org { org: "org".into() }).0, a);
        assert!(matches!(*t.get(ROOT_INO).unwrap(), Node::Root));
    }

    /// Many threads interning new and existing keys at once: finishes (a read lock taken
    /// twice under a queued writer deadlocks) and agrees on every number.
    #[test]
    fn concurrent_interning_neither_deadlocks_nor_disagrees() {
        let t = std::sync::Arc::new(InodeTable::new());
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    (0..2000)
                        .map(|i| {
                            let org = format!("org{}", (i * 7 + n) % 500);
                            t.intern(org_key(&org), || Node::Org { org: org.clone() }).0
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let results: Vec<Vec<u64>> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        for (n, inos) in results.iter().enumerate() {
            for (i, &ino) in inos.iter().enumerate() {
                let org = format!("org{}", (i * 7 + n) % 500);
                assert_eq!(t.intern(org_key(&org), || unreachable!()).0, ino);
            }
        }
    }

    #[test]
    fn keys_separate_commits_and_views() {
        let keys = [
            view_key(5, "aaa", "q4"),
            view_key(5, "bbb", "q4"),
            view_key(5, "aaa", "Q4"),
            view_key(6, "aaa", "q4"),
            child_key(5, "q4"),
            child_key(7, "q4"),
            org_key("q4"),
            repo_key(&RepoId::new("q4", "x"), None),
            repo_key(&RepoId::new("q4", "x"), Some("main")),
            hf_key("root", &[]),
            hf_key("repo", &["q4", "x"]),
            hf_key("refs", &["q4", "x"]),
            hf_key("snapshots", &["q4", "x"]),
            hf_key("ref", &["q4", "x", "main", "aaa"]),
            hf_key("ref", &["q4", "x", "main", "bbb"]),
            hf_key("snapshot", &["q4", "x", "aaa"]),
            hf_key("snapshot", &["q4", "x", "bbb"]),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }
}

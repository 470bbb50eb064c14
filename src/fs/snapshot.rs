//! A repo at one commit, shaped for the filesystem: the manifest plus its views (`all` and
//! one per quant), each a directory tree over the manifest's files.
//!
//! A snapshot is immutable and shared (`Arc`) by every node and open handle that came from
//! it; that is what keeps a handle reading the commit it was opened at while the branch it
//! came from moves on.

use std::collections::BTreeMap;

use crate::manifest::{FileEntry, Manifest};
use crate::quant::{self, Variant};

/// Which view of a repo: the whole repo, or one quant (index into [`Snapshot::quants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewKind {
    All,
    Quant(usize),
}

pub use crate::quant::ALL_VIEW;

/// One entry of a directory in a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Child {
    /// Index into [`ViewTree::dirs`].
    Dir(usize),
    /// Index into [`Manifest::files`].
    File(usize),
}

#[derive(Debug, Default)]
pub struct Dir {
    /// Path of the directory inside the repo (`""` for the view's root).
    pub path: String,
    /// Sorted by name (byte order), so listings are stable and lookups binary-search.
    pub children: Vec<(String, Child)>,
}

/// The directory tree of one view. `dirs[0]` is its root.
#[derive(Debug)]
pub struct ViewTree {
    pub dirs: Vec<Dir>,
    /// Manifest indices of the files in this view (for status and progress).
    pub files: Vec<usize>,
}

impl ViewTree {
    fn build(manifest: &Manifest, files: Vec<usize>) -> Self {
        // Directory path → its children by name. BTreeMaps give sorted listings for free.
        let mut tree: BTreeMap<String, BTreeMap<String, Option<usize>>> = BTreeMap::new();
        tree.insert(String::new(), BTreeMap::new());
        for &i in &files {
            let path = manifest.files[i].path.as_str();
            let mut parent = String::new();
            let mut rest = path;
            while let Some((dir, tail)) = rest.split_once('/') {
                let dir_path =
                    if parent.is_empty() { dir.to_string() } else { format!("{parent}/{dir}") };
                tree.entry(parent.clone()).or_default().entry(dir.to_string()).or_insert(None);
                tree.entry(dir_path.clone()).or_default();
                parent = dir_path;
                rest = tail;
            }
            // A name that is a directory in one place and a file in another was rejected when
            // the manifest was built; `or_insert` keeps the first either way.
            tree.entry(parent).or_default().entry(rest.to_string()).or_insert(Some(i));
        }
        let index: BTreeMap<&str, usize> =
            tree.keys().enumerate().map(|(i, path)| (path.as_str(), i)).collect();
        let dirs = tree
            .iter()
            .map(|(path, children)| Dir {
                path: path.clone(),
                children: children
                    .iter()
                    .map(|(name, file)| {
                        let child = match file {
                            Some(f) => Child::File(*f),
                            None => {
                                let sub = if path.is_empty() {
                                    name.clone()
                                } else {
                                    format!("{path}/{name}")
                                };
                                Child::Dir(index[sub.as_str()])
                            }
                        };
                        (name.clone(), child)
                    })
                    .collect(),
            })
            .collect();
        // BTreeMap order puts "" first, so dirs[0] is the root.
        Self { dirs, files }
    }

    pub fn lookup(&self, dir: usize, name: &str) -> Option<Child> {
        let children = &self.dirs.get(dir)?.children;
        children.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().map(|i| children[i].1)
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub manifest: Manifest,
    /// Quant names as the repo spells them, sorted case-insensitively.
    pub quants: Vec<String>,
    pub all: ViewTree,
    /// One tree per entry of `quants`.
    pub quant_views: Vec<ViewTree>,
}

impl Snapshot {
    pub fn new(manifest: Manifest) -> Self {
        let quants = quant::quants(manifest.files.iter().map(|f| f.path.as_str()));
        let variants: Vec<Variant> =
            manifest.files.iter().map(|f| quant::classify(&f.path)).collect();
        let all = ViewTree::build(&manifest, (0..manifest.files.len()).collect());
        let quant_views = quants
            .iter()
            .map(|q| {
                let members = (0..variants.len()).filter(|&i| variants[i].shown_in(q)).collect();
                ViewTree::build(&manifest, members)
            })
            .collect();
        Self { manifest, quants, all, quant_views }
    }

    pub fn view(&self, kind: ViewKind) -> Option<&ViewTree> {
        match kind {
            ViewKind::All => Some(&self.all),
            ViewKind::Quant(i) => self.quant_views.get(i),
        }
    }

    pub fn view_name(&self, kind: ViewKind) -> &str {
        match kind {
            ViewKind::All => ALL_VIEW,
            ViewKind::Quant(i) => self.quants.get(i).map_or(ALL_VIEW, String::as_str),
        }
    }

    /// Find a view by directory name: `all`, or a quant, case-insensitively.
    pub fn find_view(&self, name: &str) -> Option<ViewKind> {
        if name == ALL_VIEW {
            return Some(ViewKind::All);
        }
        self.quants.iter().position(|q| q.eq_ignore_ascii_case(name)).map(ViewKind::Quant)
    }

    /// View names in listing order: the quants, then `all`.
    pub fn view_names(&self) -> impl Iterator<Item = (ViewKind, &str)> {
        self.quants
            .iter()
            .enumerate()
            .map(|(i, q)| (ViewKind::Quant(i), q.as_str()))
            .chain(std::iter::once((ViewKind::All, ALL_VIEW)))
    }

    pub fn file(&self, index: usize) -> Option<&FileEntry> {
        self.manifest.files.get(index)
    }

    /// What fetching file `index` needs: where it is on the Hub (at this commit) and its hash.
    pub fn file_ref(&self, index: usize) -> Option<crate::fetch::FileRef> {
        let entry = self.file(index)?;
        Some(crate::fetch::FileRef {
            remote: crate::hub::RemoteFile {
                repo: self.manifest.repo.clone(),
                commit: self.manifest.commit.clone(),
                path: entry.path.clone(),
                size: entry.size,
            },
            hash: entry.hash,
        })
    }
}

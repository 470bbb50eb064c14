//! The configuration file (`--config`, TOML): defaults for every `mount` flag and the repos to pin
//! and pre-pull (doc/CONFIGURATION.md), and the part of the configuration a running mount takes
//! again at SIGHUP ([`LiveSettings`]).
//!
//! This module only reads and checks the file; merging it with the command line and the
//! environment happens in [`crate::cli`], where all three meet. Every key is optional, and an
//! unknown key is an error rather than a silently ignored typo: an operator who writes
//! `max_cache = "50G"` must learn at once that nothing bounds the cache. Errors name the file,
//! the line and the column, taken from the span toml reports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::manifest::RepoId;

/// Read when `--config` is not given, if it exists: where packages and configuration
/// management put system-wide settings. A missing file there means "no configuration".
pub const DEFAULT_CONFIG_PATH: &str = "/etc/modelfs/config.toml";

/// What a `[[repo]]` entry tracks when it names no revision: the Hub's default branch.
const DEFAULT_REVISION: &str = "main";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}:{line}:{column}: {message}")]
    Syntax { path: String, line: usize, column: usize, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The log line format (`--log-format`, `log_format`).
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

/// The file as written: every key optional, `None` meaning "not set here".
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub store: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub offline: Option<bool>,
    pub allow_other: Option<bool>,
    /// Seconds.
    pub read_timeout: Option<u64>,
    /// Seconds.
    pub revalidate: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub chunk_size: Option<u64>,
    pub max_connections: Option<usize>,
    #[serde(default, deserialize_with = "size")]
    pub max_inflight_bytes: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub max_request_size: Option<u64>,
    pub threads: Option<usize>,
    #[serde(default, deserialize_with = "size")]
    pub max_cache_size: Option<u64>,
    pub metrics_addr: Option<SocketAddr>,
    /// Prefetch model files' tensors in loader order (doc/SEMANTICS.md, "Cold start").
    pub load_plans: Option<bool>,
    /// Copy what load plans store into the kernel's page cache (doc/DESIGN.md, "Pushing
    /// planned chunks into the page cache").
    pub push_pages: Option<bool>,
    /// The shared tier, `s3://BUCKET/PREFIX` or `file:///DIR`.
    pub tier: Option<String>,
    /// Where repos' bytes are kept unless their `[[repo]]` entry says otherwise.
    pub profile: Option<crate::profile::Profile>,
    /// Read-only stores under the store (`--store-ro`), asked in this order.
    #[serde(default)]
    pub store_ro: Vec<PathBuf>,
    pub daemon: Option<bool>,
    pub pid_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    /// `RUST_LOG` syntax, e.g. `"modelfs=debug,info"`; `RUST_LOG` itself wins when set.
    #[serde(default, deserialize_with = "log_filter")]
    pub log_filter: Option<String>,
    /// Owner, group and file mode of every repo's nodes unless a `[[repo]]` entry says
    /// otherwise (doc/OPERATIONS.md, "Who may read what").
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    #[serde(default, deserialize_with = "crate::access::mode")]
    pub mode: Option<u16>,
    /// Gated and private repos that no `[[repo]]` entry names are readable by the mount's
    /// uid alone.
    pub restrict_gated: Option<bool>,
    #[serde(default, rename = "repo")]
    pub repos: Vec<RepoEntry>,
}

impl ConfigFile {
    /// The access rules the file sets (everything readable by all when it sets none).
    pub fn access_policy(&self) -> crate::access::AccessPolicy {
        let default = crate::access::Grant { uid: self.uid, gid: self.gid, mode: self.mode };
        let rules = self.repos.iter().map(|r| (r.id.clone(), r.grant())).collect();
        crate::access::AccessPolicy::new(default, rules, self.restrict_gated.unwrap_or(false))
    }
}

/// One `[[repo]]` table: a repo the mount pins against eviction and/or downloads at start.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepoEntry {
    /// A repo, or (for an entry that only sets `uid`, `gid`, `mode`) a glob such as `myteam/*`.
    pub id: crate::access::RepoSelector,
    #[serde(default = "default_revision", deserialize_with = "revision")]
    pub revision: String,
    /// Quant views to pull (e.g. `q4f16`, `Q4_K_M`); every file when empty.
    #[serde(default)]
    pub quants: Vec<String>,
    /// Eviction never removes this repo's files.
    #[serde(default)]
    pub pin: bool,
    /// Download it (its `quants`) into the store when the mount starts.
    #[serde(default)]
    pub pull_on_start: bool,
    /// Where its bytes are kept: `none`, `local` or `shared` (the mount's when absent).
    #[serde(default)]
    pub profile: Option<crate::profile::Profile>,
    /// Owner, group and file mode of its nodes.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    #[serde(default, deserialize_with = "crate::access::mode")]
    pub mode: Option<u16>,
}

impl RepoEntry {
    /// The one repo it names; `None` for a glob.
    pub fn repo(&self) -> Option<&RepoId> {
        self.id.exact()
    }

    pub fn grant(&self) -> crate::access::Grant {
        crate::access::Grant { uid: self.uid, gid: self.gid, mode: self.mode }
    }
}

/// The `[[repo]]` entries of `repos` that name a profile, with it.
pub fn named_profiles(
    repos: &[RepoEntry],
) -> impl Iterator<Item = (RepoId, crate::profile::Profile)> + '_ {
    repos.iter().filter_map(|r| Some((r.repo()?.clone(), r.profile?)))
}

/// A configuration file that was found and read, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub path: PathBuf,
    pub file: ConfigFile,
}

/// Find and read the configuration: `explicit` must exist; without it, [`DEFAULT_CONFIG_PATH`]
/// is read if it exists.
pub fn load(explicit: Option<&Path>) -> Result<Option<Loaded>, ConfigError> {
    load_or_default(explicit, Path::new(DEFAULT_CONFIG_PATH))
}

fn load_or_default(explicit: Option<&Path>, default: &Path) -> Result<Option<Loaded>, ConfigError> {
    let path = explicit.unwrap_or(default);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(source) => return Err(ConfigError::Read { path: path.display().to_string(), source }),
    };
    let mut file = parse(&text, path)?;
    // Relative paths in the file mean "next to the file", not "wherever modelfs was started".
    let dir = path.parent().unwrap_or(Path::new("/"));
    for p in [&mut file.store, &mut file.pid_file, &mut file.log_file].into_iter().flatten() {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(Some(Loaded { path: path.to_path_buf(), file }))
}

/// Parse the text of a configuration file; `path` only names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
    let name = path.display().to_string();
    let file: ConfigFile = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            ConfigError::Syntax { path: name.clone(), line, column, message: e.message().into() }
        }
        None => ConfigError::Invalid { path: name.clone(), message: e.message().into() },
    })?;
    let mut seen = std::collections::HashSet::new();
    for r in &file.repos {
        let is_default_revision = r.revision == DEFAULT_REVISION;
        let only_access = r.quants.is_empty()
            && !r.pin
            && !r.pull_on_start
            && r.profile.is_none()
            && is_default_revision;
        if r.repo().is_none() && !only_access {
            return Err(ConfigError::Invalid {
                path: name,
                message: format!(
                    "[[repo]] {}: a glob can only set uid, gid and mode (revision, quants, pin, \
                     pull_on_start and profile need one repo id)",
                    r.id
                ),
            });
        }
        if !seen.insert((r.id.to_string(), &r.revision)) {
            return Err(ConfigError::Invalid {
                path: name,
                message: format!("[[repo]] {}@{} appears twice", r.id, r.revision),
            });
        }
    }
    Ok(file)
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    // A span never splits a character, but be safe against one that would.
    let before = text.get(..at).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

fn default_revision() -> String {
    DEFAULT_REVISION.to_string()
}

/// A byte count: an integer, or a string such as `"100G"` ([`crate::cli::parse_size`]).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a size: bytes, or a string like \"100G\"")
    })? {
        Size::Bytes(0) => Err(serde::de::Error::custom("a size must be more than 0")),
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(s) => crate::cli::parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    tracing_subscriber::EnvFilter::builder()
        .parse(&s)
        .map_err(|e| serde::de::Error::custom(format!("bad log filter {s:?}: {e}")))?;
    Ok(Some(s))
}

fn revision<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if crate::names::valid_revision(&s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!("{s:?} is not a valid revision")))
    }
}

/// The settings a running mount takes from the configuration again at SIGHUP. Everything
/// else in [`crate::cli::MountConfig`] is fixed for the life of the mount (a change is logged
/// as needing a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSettings {
    /// Bound on the store's size; `None` is unbounded.
    pub max_cache_size: Option<u64>,
    /// Repos whose files eviction never removes.
    pub pinned: Vec<RepoId>,
    /// The log filter in force (`RUST_LOG` syntax).
    pub log_filter: String,
    /// How long a resolved branch is trusted.
    pub revalidate: std::time::Duration,
    /// Whether load plans run.
    pub load_plans: bool,
    /// Who may read what.
    pub access: crate::access::AccessPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> Result<ConfigFile, ConfigError> {
        parse(text, Path::new("/etc/modelfs/config.toml"))
    }

    #[test]
    fn every_key() {
        let f = p(r#"
            store = "/var/cache/modelfs"
            endpoint = "http://127.0.0.1:9"
            offline = true
            allow_other = true
            read_timeout = 30
            revalidate = 0
            chunk_size = "4M"
            max_connections = 8
            max_inflight_bytes = 134217728
            threads = 2
            max_cache_size = "100G"
            metrics_addr = "127.0.0.1:9100"
            load_plans = false
            tier = "file:///srv/tier"
            profile = "shared"
            store_ro = ["/mnt/models-ro"]
            daemon = false
            pid_file = "/run/m.pid"
            log_file = "/var/log/m.log"
            log_format = "json"
            log_filter = "modelfs=debug"

            [[repo]]
            id = "org/a"
            revision = "v1.0"
            quants = ["q4f16", "fp16"]
            pin = true
            pull_on_start = true
            profile = "none"

            [[repo]]
            id = "org/b"
        "#)
        .unwrap();
        assert_eq!(f.store, Some(PathBuf::from("/var/cache/modelfs")));
        assert_eq!(f.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!((f.offline, f.allow_other, f.daemon), (Some(true), Some(true), Some(false)));
        assert_eq!((f.read_timeout, f.revalidate), (Some(30), Some(0)));
        assert_eq!(f.chunk_size, Some(4 << 20));
        assert_eq!(f.load_plans, Some(false));
        assert_eq!(f.tier.as_deref(), Some("file:///srv/tier"));
        assert_eq!(f.profile, Some(crate::profile::Profile::Shared));
        assert_eq!(f.store_ro, vec![PathBuf::from("/mnt/models-ro")]);
        assert_eq!(f.max_inflight_bytes, Some(128 << 20));
        assert_eq!((f.max_connections, f.threads), (Some(8), Some(2)));
        assert_eq!(f.max_cache_size, Some(100 << 30));
        assert_eq!(f.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(f.pid_file, Some(PathBuf::from("/run/m.pid")));
        assert_eq!(f.log_file, Some(PathBuf::from("/var/log/m.log")));
        assert_eq!(f.log_format, Some(LogFormat::Json));
        assert_eq!(f.log_filter.as_deref(), Some("modelfs=debug"));
        assert_eq!(
            f.repos,
            vec![
                RepoEntry {
                    id: crate::access::RepoSelector::Exact(RepoId::new("org", "a")),
                    revision: "v1.0".into(),
                    quants: vec!["q4f16".into(), "fp16".into()],
                    pin: true,
                    pull_on_start: true,
                    profile: Some(crate::profile::Profile::None),
                    uid: None,
                    gid: None,
                    mode: None,
                },
                RepoEntry {
                    id: crate::access::RepoSelector::Exact(RepoId::new("org", "b")),
                    revision: "main".into(),
                    quants: vec![],
                    pin: false,
                    pull_on_start: false,
                    profile: None,
                    uid: None,
                    gid: None,
                    mode: None,
                },
            ]
        );
    }

    #[test]
    fn access_keys_parse_and_globs_set_access_only() {
        let text = "uid = 10\nrestrict_gated = true\n\n[[repo]]\nid = \"team/*\"\ngid = 1234\nmode = 0o440\n\n[[repo]]\nid = \"team/base\"\npin = true\n";
        let f = parse(text, Path::new("c.toml")).unwrap();
        let p = f.access_policy();
        assert!(p.restrict_gated);
        assert_eq!(p.default.uid, Some(10));
        assert_eq!(p.rules.len(), 1, "an entry that sets no access is no rule");
        let o = p.owner(Some(&RepoId::new("team", "x")), Some(true), (0, 0));
        assert_eq!((o.uid, o.gid, o.mode), (10, 1234, 0o440));
        for bad in [
            "[[repo]]\nid = \"team/*\"\npin = true\n",
            "[[repo]]\nid = \"team/*\"\nrevision = \"v1\"\n",
            "[[repo]]\nid = \"a/b\"\nmode = 0o1777\n",
            "[[repo]]\nid = \"team\"\nmode = 0o440\n",
        ] {
            assert!(parse(bad, Path::new("c.toml")).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_file_sets_nothing() {
        assert_eq!(p("").unwrap(), ConfigFile::default());
        assert_eq!(p("# only a comment\n").unwrap(), ConfigFile::default());
    }

    fn syntax(text: &str) -> (usize, usize, String) {
        match p(text) {
            Err(ConfigError::Syntax { line, column, message, .. }) => (line, column, message),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn errors_name_line_and_column() {
        let (line, col, msg) = syntax("threads = 2\nmax_cache = \"5G\"\n");
        assert_eq!((line, col), (2, 1));
        assert!(msg.contains("unknown field `max_cache`"), "{msg}");

        let (line, col, msg) = syntax("threads = 2\n\nmax_cache_size = \"5X\"\n");
        assert_eq!((line, col), (3, 18));
        assert!(msg.contains("unknown unit"), "{msg}");

        let (line, _, msg) = syntax("[[repo]]\nid = \"no-slash\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("\"no-slash\" is not a repo id"), "{msg}");

        let (line, _, msg) = syntax("[[repo]]\nid = \"o/r\"\npinned = true\n");
        assert_eq!(line, 3);
        assert!(msg.contains("unknown field `pinned`"), "{msg}");

        let (line, _, _) = syntax("threads = \"four\"\n");
        assert_eq!(line, 1);
        let (line, _, _) = syntax("store = \"/a\"\nstore = \"/b\"\n");
        assert_eq!(line, 2);
        let (line, _, _) = syntax("log_format = \"xml\"\n");
        assert_eq!(line, 1);
        let (line, _, msg) = syntax("\n\nlog_filter = \"modelfs=loud\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("bad log filter"), "{msg}");
        let (line, _, _) = syntax("max_cache_size = 0\n");
        assert_eq!(line, 1);
        let (line, _, _) = syntax("metrics_addr = \"localhost\"\n");
        assert_eq!(line, 1);
        // Not TOML at all.
        let (line, _, _) = syntax("threads = 2\nthis is not toml\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn error_display_is_one_line_with_location() {
        let e = p("x = 1\n").unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with("config /etc/modelfs/config.toml:1:1: unknown field `x`"),
            "{shown}"
        );
        assert!(!shown.trim_end().contains('\n'), "{shown}");
    }

    #[test]
    fn duplicate_repo_is_an_error() {
        let e = p("[[repo]]\nid = \"o/r\"\n[[repo]]\nid = \"o/r\"\nrevision = \"main\"\n");
        assert!(matches!(e, Err(ConfigError::Invalid { .. })), "{e:?}");
        // The same repo at two revisions is two entries.
        assert!(p("[[repo]]\nid = \"o/r\"\n[[repo]]\nid = \"o/r\"\nrevision = \"v1\"\n").is_ok());
    }

    #[test]
    fn finding_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.toml");
        // A missing default is no configuration; a missing explicit file is an error.
        assert_eq!(load_or_default(None, &absent).unwrap(), None);
        let e = load_or_default(Some(&absent), &absent).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        );
        assert!(e.to_string().contains("absent.toml"), "{e}");

        let file = dir.path().join("c.toml");
        std::fs::write(&file, "store = \"cache\"\nlog_file = \"/abs/m.log\"\n").unwrap();
        let got = load_or_default(None, &file).unwrap().unwrap();
        assert_eq!(got.path, file);
        // Relative paths are relative to the file.
        assert_eq!(got.file.store, Some(dir.path().join("cache")));
        assert_eq!(got.file.log_file, Some(PathBuf::from("/abs/m.log")));
        let explicit = load_or_default(Some(&file), &absent).unwrap().unwrap();
        assert_eq!(explicit, got);
    }

    proptest! {
        #[test]
        fn line_column_matches_a_naive_count(text in "[a-z\\n]{0,60}", at in 0usize..70) {
            let at = at.min(text.len());
            let (line, col) = line_column(&text, at);
            let mut l = 1;
            let mut c = 1;
            for ch in text[..at].chars() {
                if ch == '\n' { l += 1; c = 1 } else { c += 1 }
            }
            prop_assert_eq!((line, col), (l, c));
        }

        #[test]
        fn integer_sizes_are_bytes(n in 1u64..u64::MAX >> 1) {
            let f = p(&format!("max_cache_size = {n}\nchunk_size = \"{n}\"")).unwrap();
            prop_assert_eq!(f.max_cache_size, Some(n));
            prop_assert_eq!(f.chunk_size, Some(n));
        }
    }
}

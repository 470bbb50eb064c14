//! The command line (doc/CONFIGURATION.md): clap definitions, merged with the environment and the
//! configuration file ([`crate::config`]) into typed configuration, so the rest of the program
//! sees one resolved value per setting.
//!
//! Precedence, for every setting: a flag given on the command line, else the environment
//! variable that sets it (only `MODELFS_STORE`, `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `RUST_LOG`
//! exist), else the configuration file, else the built-in default. To tell "given" from
//! "defaulted", flags with a value are `Option`s and the defaults are applied here, after the
//! merge, never by clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigFile, LiveSettings, Loaded, LogFormat, RepoEntry};
use crate::store::DEFAULT_CHUNK_SIZE;

/// What every command reads from the environment, shown under `--help`.
pub const ENVIRONMENT_HELP: &str = "\
Environment (read as huggingface_hub reads it):
  HF_ENDPOINT      Hub endpoint [default: https://huggingface.co]
  HF_TOKEN         access token for gated and private repos (sent to the Hub's host only)
  HF_TOKEN_PATH    file holding the token [default: $HF_HOME/token]
  HF_HOME          huggingface_hub's home [default: $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface]
  HF_HUB_OFFLINE   1: never contact the Hub (as --offline)
  MODELFS_STORE    store directory (as --store)
  RUST_LOG         log filter, e.g. modelfs=debug [default: info]";

#[derive(Parser, Debug)]
#[command(
    name = "modelfs",
    version,
    about = "HuggingFace Hub model repos as a lazily fetched, read-only filesystem",
    after_help = ENVIRONMENT_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount the model namespace at MOUNTPOINT and serve it in the foreground until
    /// SIGINT/SIGTERM (or `modelfs unmount`).
    #[command(after_help = ENVIRONMENT_HELP)]
    Mount(MountArgs),
    /// Unmount a modelfs mount (also clears a mount left by a killed daemon).
    Unmount {
        /// Where the mount is, e.g. /models.
        mountpoint: PathBuf,
    },
    /// Download a repo (or some quants of it) into the store now, with progress bars. Works
    /// while a daemon serves the same store; its progress shows in the mount's xattrs.
    #[command(after_help = ENVIRONMENT_HELP)]
    Pull(PullArgs),
    /// What the store holds: repos, revisions, quants, cached/total bytes and state.
    Status(StatusArgs),
    /// Re-check the sha256 (or git blob id) of every complete file in the store.
    Verify(VerifyArgs),
    /// Evict least recently used files until the store is under its bound.
    Gc(GcArgs),
    /// Put a local directory (a finetuned model, a LoRA adapter) into the store as the repo
    /// ORG/NAME: every mount of the store shows it at once, never asks the Hub about it, and
    /// never evicts it. Importing changed files again moves the branch.
    Import(ImportArgs),
    /// Remove a repo `modelfs import` made (its files go unless another repo has them).
    Remove(RemoveArgs),
    /// Serve the Kubernetes CSI node plugin (Identity and Node services) on a unix socket,
    /// publishing volumes from the node's modelfs mount by read-only bind mounts.
    Csi(CsiArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CsiArgs {
    /// The socket the kubelet's node-driver-registrar points at: unix:///PATH or /PATH.
    #[arg(long, default_value = "unix:///csi/csi.sock", value_name = "ENDPOINT")]
    pub endpoint: String,
    /// The node-wide modelfs mount volumes are published from.
    #[arg(long, default_value = "/models", value_name = "DIR")]
    pub mount: PathBuf,
    /// The node's name as Kubernetes knows it [default: $NODE_NAME, else the hostname].
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
}

/// Options every store command shares.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store directory [default: $MODELFS_STORE, else the config file's `store`, else the
    /// store of the running mount, else $XDG_CACHE_HOME/modelfs, else ~/.cache/modelfs].
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Configuration file [default: /etc/modelfs/config.toml when present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct PullArgs {
    /// ORG/REPO or ORG/REPO@REV.
    pub repo: String,
    /// Only the files of this quant view (repeatable), e.g. q4f16 or Q4_K_M.
    #[arg(long)]
    pub quant: Vec<String>,
    /// Only files whose repo path matches this glob (repeatable), e.g. '*.json'. As in
    /// huggingface_hub's allow_patterns, `*` also matches `/`, and 'dir/' means 'dir/*'.
    /// With --quant, only files of those views that match.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Hub endpoint [default: $HF_ENDPOINT, else the config file's `endpoint`, else
    /// https://huggingface.co].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Most chunk fetches in flight at once (each holds one chunk in memory until stored).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_connections: usize,
    /// Seconds a fetch may wait for the Hub, retries included.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub read_timeout: u64,
    /// Chunk size if this pull creates the store (an existing store keeps its own), e.g. 8M.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: Option<u64>,
    /// Seed the tier shared by every node: s3://BUCKET/PREFIX or file:///DIR [default: the
    /// config file's `tier`]. Chunks it holds are read from it; every chunk of the pulled
    /// files (fetched now or stored before) is written to it, with the repo's ref and
    /// manifest, before the pull ends.
    #[arg(long, value_name = "URL")]
    pub tier: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The directory to import: every regular file under it (symlinks inside it are followed;
    /// `.git/` is left out).
    pub dir: PathBuf,
    /// The repo it becomes, ORG/NAME (names as the Hub allows them; not a repo of the Hub
    /// this store already holds).
    #[arg(long = "as", value_name = "ORG/NAME")]
    pub name: String,
    /// The branch that points at the import.
    #[arg(long, default_value = "main", value_name = "NAME")]
    pub revision: String,
    /// Also write it to the tier shared by every node (s3://BUCKET/PREFIX or file:///DIR), so
    /// that every mount of the cluster shows it [default: the config file's `tier`].
    #[arg(long, value_name = "URL")]
    pub tier: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RemoveArgs {
    /// The imported repo, ORG/NAME.
    pub repo: String,
    /// Also remove it from the tier shared by every node [default: the config file's `tier`].
    #[arg(long, value_name = "URL")]
    pub tier: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// ORG/REPO or ORG/REPO@REV; every repo in the store when absent.
    pub repo: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// ORG/REPO or ORG/REPO@REV; every complete file in the store when absent.
    pub repo: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug, Clone)]
pub struct GcArgs {
    /// Evict until the store holds at most this many bytes, e.g. 50G [default: the
    /// config file's max_cache_size].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_cache_size: Option<u64>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Where to mount, e.g. /models. Created if missing.
    pub mountpoint: PathBuf,
    /// Configuration file: defaults for every flag below, and repos to pin and pre-pull
    /// [default: /etc/modelfs/config.toml when present]. Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store directory [default: $MODELFS_STORE, else the config file's `store`, else
    /// $XDG_CACHE_HOME/modelfs, else ~/.cache/modelfs].
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Hub endpoint [default: $HF_ENDPOINT, else the config file's `endpoint`, else
    /// https://huggingface.co].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Never contact the Hub: serve what the store has [default: $HF_HUB_OFFLINE, else the
    /// config file's `offline`, else off].
    #[arg(long)]
    pub offline: bool,
    /// Let users other than the one who mounted read the mount (FUSE allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Seconds a read may wait for the Hub, retries included, before it fails with EIO
    /// [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub read_timeout: Option<u64>,
    /// Seconds a resolved branch is trusted before the Hub is asked again [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub revalidate: Option<u64>,
    /// Chunk size of a NEW store (an existing store keeps its own), e.g. 8M, 4194304
    /// [default: 8M].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: Option<u64>,
    /// Most parallel connections to one host (the Hub, or its CDN) [default: 16].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most bytes read-ahead may hold in flight (each parallel fetch buffers its chunks
    /// until they are stored), e.g. 256M [default: 32M].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_inflight_bytes: Option<u64>,
    /// Longest read-ahead request. When --max-inflight-bytes allows more chunks in flight than
    /// --max-connections, adjacent chunks are coalesced into requests up to this long, one
    /// per connection; the chunk size turns coalescing off [default: 64M].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_request_size: Option<u64>,
    /// FUSE worker threads. Reads the store can answer run on them; everything that waits
    /// for the network runs on the async runtime instead [default: 4].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Keep the store under this many bytes by evicting least recently used whole files
    /// (open files and pinned repos are never evicted), e.g. 100G. Unbounded when absent.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_cache_size: Option<u64>,
    /// Serve Prometheus metrics (/metrics) and health checks (/healthz, /readyz) over HTTP
    /// on this address: a port alone (9100) is loopback, 127.0.0.1:9100; any other interface
    /// only when named (0.0.0.0:9100). Off when absent.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// A tier shared by every node: s3://BUCKET/PREFIX (credentials, region and endpoint
    /// from the AWS_* environment) or file:///DIR (a shared filesystem). Read before the Hub;
    /// what the Hub sends is written to it once [default: the config file's `tier`].
    #[arg(long, value_name = "URL")]
    pub tier: Option<String>,
    /// A read-only store (repeatable): one `modelfs pull` filled, mounted read-only on many
    /// nodes (e.g. a ReadOnlyMany volume). Asked after the store, before the tier and the Hub;
    /// never written. Its chunk size must be the store's [default: the config file's
    /// `store_ro`].
    #[arg(long = "store-ro", value_name = "DIR")]
    pub store_ro: Vec<PathBuf>,
    /// Where repos' bytes are kept: none (a bounded memory cache, nothing on disk), local
    /// (the store), shared (the store and the tier); a `[[repo]]` entry's `profile` overrides
    /// it [default: the config file's `profile`, else shared with a tier, else local].
    #[arg(long, value_enum, value_name = "PROFILE")]
    pub profile: Option<crate::profile::Profile>,
    /// Do not run load plans: never prefetch a model file's tensors ahead of its reads
    /// (safetensors, GGUF, ONNX external data); read-ahead for sequential reads stays
    /// [default: the config file's `load_plans`, else plans on].
    #[arg(long)]
    pub no_load_plans: bool,
    /// Do not copy the chunks load plans store into the kernel's page cache; mapped loaders'
    /// page faults are then answered by reads [default: the config file's `push_pages`, else
    /// on]. The pushed pages are charged to modelfs's memory cgroup, not the loader's.
    #[arg(long)]
    pub no_push_pages: bool,
    /// Detach from the terminal once the mount answers, logging to --log-file and writing
    /// --pid-file.
    #[arg(long)]
    pub daemon: bool,
    /// Stay in the foreground even if the config file says `daemon = true` (for systemd
    /// `Type=notify` and containers).
    #[arg(long, conflicts_with = "daemon")]
    pub foreground: bool,
    /// Write the daemon's pid here, removed at a clean exit [default with --daemon:
    /// /run/modelfs/<mountpoint>.pid as root, else $XDG_RUNTIME_DIR/modelfs/<mountpoint>.pid].
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Append the log here instead of standard error; reopened at SIGHUP, for log rotation
    /// [default with --daemon: <store>/modelfs.log].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Log line format: text, or json (one object per line) for log collectors
    /// [default: text]. RUST_LOG (else the config file's `log_filter`) filters.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Everything `mount` needs, resolved: one value per setting, from the command line, else the
/// environment, else the configuration file, else the built-in default.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    /// Who may read what (`uid`, `gid`, `mode`, `restrict_gated`, `[[repo]]` entries).
    pub access: crate::access::AccessPolicy,
    pub store: PathBuf,
    /// `None`: the Hub client takes `$HF_ENDPOINT`, else its default (it warns about an
    /// unusable `$HF_ENDPOINT` and falls back, as huggingface_hub does).
    pub endpoint: Option<String>,
    pub offline: bool,
    pub allow_other: bool,
    pub read_timeout: Duration,
    pub revalidate: Duration,
    pub chunk_size: u64,
    pub max_connections: usize,
    pub max_inflight_bytes: u64,
    pub max_request_size: u64,
    pub threads: usize,
    pub max_cache_size: Option<u64>,
    pub metrics_addr: Option<SocketAddr>,
    /// Prefetch model files' tensors in loader order once a program walks them.
    pub load_plans: bool,
    /// Push what load plans store into the kernel's page cache (doc/DESIGN.md, "Pushing
    /// planned chunks into the page cache").
    pub push_pages: bool,
    pub tier: Option<String>,
    pub profile: Option<crate::profile::Profile>,
    /// Read-only stores under the store, asked in this order.
    pub store_ro: Vec<PathBuf>,
    pub daemon: bool,
    pub pid_file: Option<PathBuf>,
    /// Where the log goes instead of standard error.
    pub log_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// The log filter (`RUST_LOG` syntax): `$RUST_LOG`, else the file's `log_filter`, else `info`.
    pub log_filter: String,
    /// Repos whose files eviction never removes (config `[[repo]] pin = true`).
    pub pinned: Vec<crate::manifest::RepoId>,
    /// Every `[[repo]]` entry of the configuration file, in file order. Those with
    /// `pull_on_start` are listed by [`MountConfig::pull_on_start`].
    pub repos: Vec<RepoEntry>,
    /// The configuration file read, if any.
    pub config_file: Option<PathBuf>,
    /// The command line this was resolved from, to resolve again at SIGHUP: flags keep
    /// winning over the reloaded file.
    pub(crate) args: MountArgs,
}

impl MountArgs {
    /// Read the configuration file (`--config`, else the default one when present) and merge.
    pub fn resolve(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<MountConfig, crate::config::ConfigError> {
        let args = self.absolute();
        let loaded = crate::config::load(args.config.as_deref())?;
        Ok(args.resolve_with(loaded, env, nix::unistd::geteuid().is_root()))
    }

    /// Relative paths are made absolute now: a daemon changes directory to `/`, and a reload
    /// must find the same files.
    fn absolute(mut self) -> Self {
        for p in [&mut self.config, &mut self.store, &mut self.pid_file, &mut self.log_file]
            .into_iter()
            .flatten()
            .chain([&mut self.mountpoint])
        {
            *p = absolute(p);
        }
        self
    }

    /// Merge with an already read configuration file: flag > environment > file > default.
    pub fn resolve_with(
        self,
        loaded: Option<Loaded>,
        env: impl Fn(&str) -> Option<String>,
        root: bool,
    ) -> MountConfig {
        let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
        let (config_file, f) = match loaded {
            Some(l) => (Some(l.path), l.file),
            None => (None, ConfigFile::default()),
        };
        let access = f.access_policy();
        let store = absolute(
            &self
                .store
                .clone()
                .or_else(|| nonempty("MODELFS_STORE").map(PathBuf::from))
                .or(f.store)
                .unwrap_or_else(|| default_store(&env)),
        );
        // A set HF_ENDPOINT is left to the Hub client, which knows how to read it.
        let endpoint = self.endpoint.clone().or_else(|| {
            if nonempty("HF_ENDPOINT").is_some() {
                None
            } else {
                f.endpoint
            }
        });
        // A switch on the command line can only say "on"; HF_HUB_OFFLINE=0 can say "off",
        // and then overrides an `offline = true` in the file.
        let offline = self.offline
            || nonempty("HF_HUB_OFFLINE").map(|v| truthy(&v)).or(f.offline).unwrap_or(false);
        let daemon = !self.foreground && (self.daemon || f.daemon.unwrap_or(false));
        let pid_file = self
            .pid_file
            .clone()
            .or(f.pid_file)
            .or_else(|| daemon.then(|| default_pid_file(&self.mountpoint, &store, root, &env)));
        let log_file = self
            .log_file
            .clone()
            .or(f.log_file)
            .or_else(|| daemon.then(|| store.join(DEFAULT_LOG_FILE_NAME)));
        let log_filter = env("RUST_LOG")
            .filter(|v| tracing_subscriber::EnvFilter::builder().parse(v).is_ok())
            .or(f.log_filter)
            .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_string());
        let pinned = f.repos.iter().filter(|r| r.pin).filter_map(|r| r.repo().cloned()).collect();
        MountConfig {
            access,
            mountpoint: self.mountpoint.clone(),
            endpoint,
            offline,
            allow_other: self.allow_other || f.allow_other.unwrap_or(false),
            read_timeout: Duration::from_secs(
                self.read_timeout.or(f.read_timeout).unwrap_or(DEFAULT_READ_TIMEOUT_SECS).max(1),
            ),
            revalidate: Duration::from_secs(
                self.revalidate.or(f.revalidate).unwrap_or(DEFAULT_REVALIDATE_SECS),
            ),
            chunk_size: self.chunk_size.or(f.chunk_size).unwrap_or(DEFAULT_CHUNK_SIZE),
            max_connections: self
                .max_connections
                .or(f.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS)
                .max(1),
            max_inflight_bytes: self
                .max_inflight_bytes
                .or(f.max_inflight_bytes)
                .unwrap_or(crate::fetch::DEFAULT_MAX_INFLIGHT_BYTES),
            max_request_size: self
                .max_request_size
                .or(f.max_request_size)
                .unwrap_or(crate::fetch::DEFAULT_MAX_REQUEST_BYTES),
            threads: self.threads.or(f.threads).unwrap_or(DEFAULT_THREADS).max(1),
            max_cache_size: self.max_cache_size.or(f.max_cache_size),
            metrics_addr: self.metrics_addr.or(f.metrics_addr),
            load_plans: !self.no_load_plans && f.load_plans.unwrap_or(true),
            push_pages: !self.no_push_pages && f.push_pages.unwrap_or(true),
            tier: self.tier.clone().or(f.tier),
            profile: self.profile.or(f.profile),
            store_ro: if self.store_ro.is_empty() { f.store_ro } else { self.store_ro.clone() },
            daemon,
            pid_file,
            log_file,
            log_format: self.log_format.or(f.log_format).unwrap_or_default(),
            log_filter,
            pinned,
            repos: f.repos,
            config_file,
            store,
            args: self,
        }
    }
}

impl MountConfig {
    /// The `[[repo]]` entries to download when the mount starts.
    pub fn pull_on_start(&self) -> impl Iterator<Item = &RepoEntry> {
        self.repos.iter().filter(|r| r.pull_on_start)
    }

    /// The profile of every repo, checked against whether there is a tier.
    pub fn profiles(&self) -> Result<crate::profile::Profiles, crate::profile::ProfileError> {
        crate::profile::Profiles::new(
            self.profile,
            crate::config::named_profiles(&self.repos),
            self.tier.is_some(),
        )
    }

    /// Resolve again from the same command line and environment, re-reading the file.
    pub fn reload(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<MountConfig, crate::config::ConfigError> {
        self.args.clone().resolve(env)
    }

    /// The settings a running mount applies at SIGHUP.
    pub fn live_settings(&self) -> LiveSettings {
        LiveSettings {
            max_cache_size: self.max_cache_size,
            pinned: self.pinned.clone(),
            log_filter: self.log_filter.clone(),
            revalidate: self.revalidate,
            load_plans: self.load_plans,
            access: self.access.clone(),
        }
    }

    /// The names (config keys) of the settings that differ in `new` but take effect only at
    /// the next start.
    pub fn needs_restart(&self, new: &MountConfig) -> Vec<&'static str> {
        let pulls = |c: &MountConfig| c.pull_on_start().cloned().collect::<Vec<_>>();
        let profiles =
            |c: &MountConfig| crate::config::named_profiles(&c.repos).collect::<Vec<_>>();
        [
            ("store", self.store != new.store),
            ("endpoint", self.endpoint != new.endpoint),
            ("offline", self.offline != new.offline),
            ("allow_other", self.allow_other != new.allow_other),
            ("read_timeout", self.read_timeout != new.read_timeout),
            ("chunk_size", self.chunk_size != new.chunk_size),
            ("max_connections", self.max_connections != new.max_connections),
            ("max_inflight_bytes", self.max_inflight_bytes != new.max_inflight_bytes),
            ("max_request_size", self.max_request_size != new.max_request_size),
            ("threads", self.threads != new.threads),
            ("metrics_addr", self.metrics_addr != new.metrics_addr),
            ("tier", self.tier != new.tier),
            ("push_pages", self.push_pages != new.push_pages),
            ("profile", self.profile != new.profile),
            ("store_ro", self.store_ro != new.store_ro),
            ("repo.profile", profiles(self) != profiles(new)),
            ("daemon", self.daemon != new.daemon),
            ("pid_file", self.pid_file != new.pid_file),
            ("log_file", self.log_file != new.log_file),
            ("log_format", self.log_format != new.log_format),
            ("repo.pull_on_start", pulls(self) != pulls(new)),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

impl StoreArgs {
    /// The store and the configuration file for a store command: `--store`, else
    /// `$MODELFS_STORE`, else the file's `store`, else the store of the mount that is running
    /// (when every live mount uses the same one), else the default directory. The mount finds
    /// its store the same way save for the live mounts, so a command run beside one mount
    /// needs no `--store`, whichever way that mount was told.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<StoreConfig, crate::config::ConfigError> {
        let loaded = crate::config::load(self.config.as_deref())?;
        Ok(self.resolve_with(loaded, env, &crate::mounts::live_mounts()))
    }

    pub fn resolve_with(
        &self,
        loaded: Option<Loaded>,
        env: impl Fn(&str) -> Option<String>,
        live: &[crate::mounts::LiveMount],
    ) -> StoreConfig {
        let (path, file) = match loaded {
            Some(l) => (Some(l.path), l.file),
            None => (None, ConfigFile::default()),
        };
        let mut stores: Vec<&crate::mounts::LiveMount> = live.iter().collect();
        stores.dedup_by(|a, b| a.store == b.store);
        let one_mount = match stores.as_slice() {
            [one] => Some(*one),
            _ => None,
        };
        let (store, origin) = if let Some(flag) = &self.store {
            (flag.clone(), StoreOrigin::Flag)
        } else if let Some(dir) = env("MODELFS_STORE").filter(|v| !v.is_empty()) {
            (dir.into(), StoreOrigin::Environment)
        } else if let (Some(dir), Some(path)) = (file.store.clone(), path.clone()) {
            (dir, StoreOrigin::ConfigFile(path))
        } else if let Some(m) = one_mount {
            (m.store.clone(), StoreOrigin::Mount { mountpoint: m.mountpoint.clone(), pid: m.pid })
        } else {
            (default_store(&env), StoreOrigin::Default)
        };
        StoreConfig { store: absolute(&store), origin, file }
    }
}

/// What a store command resolved: the store, how it was found, and the configuration file's
/// settings (all `None` without a file) for the command to merge with its own flags, flags
/// first.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub store: PathBuf,
    pub origin: StoreOrigin,
    pub file: ConfigFile,
}

/// Where a store command's store came from, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOrigin {
    Flag,
    Environment,
    ConfigFile(PathBuf),
    /// The store of the one mount that runs.
    Mount {
        mountpoint: PathBuf,
        pid: u32,
    },
    Default,
}

impl std::fmt::Display for StoreOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreOrigin::Flag => write!(f, "from --store"),
            StoreOrigin::Environment => write!(f, "from $MODELFS_STORE"),
            StoreOrigin::ConfigFile(path) => write!(f, "from {}", path.display()),
            StoreOrigin::Mount { mountpoint, pid } => {
                write!(f, "the store of the mount at {} (pid {pid})", mountpoint.display())
            }
            StoreOrigin::Default => write!(f, "the default store"),
        }
    }
}

impl StoreConfig {
    /// Repos the file pins against eviction.
    pub fn pinned(&self) -> Vec<crate::manifest::RepoId> {
        self.file.repos.iter().filter(|r| r.pin).filter_map(|r| r.repo().cloned()).collect()
    }
}

/// The daemon's log, next to the store it serves, when `--daemon` has no `--log-file`.
pub const DEFAULT_LOG_FILE_NAME: &str = "modelfs.log";
/// What is logged without `RUST_LOG` or `log_filter`: starts, stops, warnings and errors.
pub const DEFAULT_LOG_FILTER: &str = "info";
/// A cold chunk on a slow link, with a few retries, fits in a minute.
const DEFAULT_READ_TIMEOUT_SECS: u64 = 60;
/// Ten minutes: a branch moves rarely, and each revalidation is a Hub request per repo.
const DEFAULT_REVALIDATE_SECS: u64 = 600;
/// The Hub's CDN serves one connection at tens of MB/s; 16 saturate a 10 Gb/s link.
const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// Enough for a few programs reading cached files at once; network waits are not on them.
const DEFAULT_THREADS: usize = 4;

/// Where the pid file of a daemon mounted at `mountpoint` goes when none is given:
/// `/run/modelfs/` as root, else `$XDG_RUNTIME_DIR/modelfs/` (both cleared at boot, so a
/// stale pid never outlives a reboot), else the store directory.
pub fn default_pid_file(
    mountpoint: &std::path::Path,
    store: &std::path::Path,
    root: bool,
    env: &impl Fn(&str) -> Option<String>,
) -> PathBuf {
    let name = format!("{}.pid", escape_path(mountpoint));
    if root {
        return PathBuf::from("/run/modelfs").join(name);
    }
    match env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("modelfs").join(name),
        None => store.join(name),
    }
}

/// A path as one file name, the way `systemd-escape --path` writes it (`/models/a` →
/// `models-a`, `/` → `-`), so that the unit instance name and the pid file agree.
pub fn escape_path(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let trimmed: Vec<&[u8]> =
        bytes.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, component) in trimmed.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, &b) in component.iter().enumerate() {
            let plain = b.is_ascii_alphanumeric() || b == b'_' || (b == b'.' && (i, j) != (0, 0));
            if plain {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `$MODELFS_STORE`, else `$XDG_CACHE_HOME/modelfs`, else `~/.cache/modelfs`
/// (doc/CONFIGURATION.md).
pub fn default_store(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(dir) = nonempty("MODELFS_STORE") {
        return dir.into();
    }
    if let Some(dir) = nonempty("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("modelfs");
    }
    PathBuf::from(nonempty("HOME").unwrap_or_else(|| "/root".into())).join(".cache/modelfs")
}

/// huggingface_hub's reading of boolean environment variables.
/// `--metrics-addr`: `HOST:PORT`, or a port alone (or `:PORT`), which binds to loopback: what
/// the endpoint exposes is for this host unless the operator says otherwise.
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let port = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| format!("{s:?} is not HOST:PORT or a port"))
}

pub(crate) fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
}

/// A byte count: plain digits, or with a binary suffix `K`, `M`, `G`, `T` (optionally
/// followed by `i`/`iB`/`B`), e.g. `8M`, `8MiB`, `512K`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift).filter(|&v| v > 0).ok_or_else(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("8X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn a_metrics_port_alone_is_loopback() {
        let loopback = Ok("127.0.0.1:9100".parse().unwrap());
        assert_eq!(parse_metrics_addr("9100"), loopback);
        assert_eq!(parse_metrics_addr(":9100"), loopback);
        assert_eq!(parse_metrics_addr("0.0.0.0:9100"), Ok("0.0.0.0:9100".parse().unwrap()));
        assert_eq!(parse_metrics_addr("[::1]:9100"), Ok("[::1]:9100".parse().unwrap()));
        assert!(parse_metrics_addr("localhost").is_err());
        assert!(parse_metrics_addr("99999").is_err());
    }

    #[test]
    fn store_default_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let all = env(&[("MODELFS_STORE", "/s"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(default_store(&all), PathBuf::from("/s"));
        let xdg = env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(default_store(&xdg), PathBuf::from("/x/modelfs"));
        let home = env(&[("HOME", "/h")]);
        assert_eq!(default_store(&home), PathBuf::from("/h/.cache/modelfs"));
    }

    type Env<'a> = &'a [(&'a str, &'a str)];

    fn env_of(pairs: Env<'_>) -> impl Fn(&str) -> Option<String> + '_ {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn file(text: &str) -> Option<Loaded> {
        let path = PathBuf::from("/etc/modelfs/config.toml");
        Some(Loaded { file: crate::config::parse(text, &path).unwrap(), path })
    }

    fn resolve(args: &[&str], text: Option<&str>, env: Env<'_>) -> MountConfig {
        MountArgs::try_parse_from_mount(args).resolve_with(text.and_then(file), env_of(env), false)
    }

    #[test]
    fn offline_from_env() {
        let on = [("HF_HUB_OFFLINE", "1")];
        let off = [("HF_HUB_OFFLINE", "0")];
        assert!(resolve(&["/m"], None, &on).offline);
        assert!(!resolve(&["/m"], None, &off).offline);
        assert!(!resolve(&["/m"], None, &[]).offline);
    }

    #[test]
    fn built_in_defaults() {
        let c = resolve(&["/m"], None, &[("HOME", "/h")]);
        assert_eq!(c.mountpoint, PathBuf::from("/m"));
        assert_eq!(c.store, PathBuf::from("/h/.cache/modelfs"));
        assert_eq!(c.endpoint, None);
        assert!(!c.offline && !c.allow_other && !c.daemon);
        assert_eq!(c.read_timeout, Duration::from_secs(60));
        assert_eq!(c.revalidate, Duration::from_secs(600));
        assert_eq!(c.chunk_size, DEFAULT_CHUNK_SIZE);
        assert_eq!(c.max_connections, 16);
        assert_eq!(c.max_inflight_bytes, crate::fetch::DEFAULT_MAX_INFLIGHT_BYTES);
        assert_eq!(c.threads, 4);
        assert_eq!(c.max_cache_size, None);
        assert_eq!(c.metrics_addr, None);
        assert!(c.load_plans, "load plans are on unless turned off");
        assert_eq!((c.pid_file, c.log_file), (None, None));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.log_filter, "info");
        assert!(c.pinned.is_empty() && c.repos.is_empty());
        assert_eq!(c.config_file, None);
    }

    const FULL: &str = r#"
        store = "/file/store"
        endpoint = "http://file:1"
        offline = true
        allow_other = true
        read_timeout = 5
        revalidate = 7
        chunk_size = "1M"
        max_connections = 3
        max_inflight_bytes = "48M"
        threads = 9
        max_cache_size = "2G"
        metrics_addr = "127.0.0.1:9100"
        load_plans = false
        daemon = true
        pid_file = "/file/m.pid"
        log_file = "/file/m.log"
        log_format = "json"
        log_filter = "modelfs=trace"
        [[repo]]
        id = "o/pinned"
        pin = true
        [[repo]]
        id = "o/pulled"
        quants = ["q4f16"]
        pull_on_start = true
    "#;

    #[test]
    fn file_fills_what_nothing_else_sets() {
        let c = resolve(&["/m"], Some(FULL), &[("HOME", "/h")]);
        assert_eq!(c.store, PathBuf::from("/file/store"));
        assert_eq!(c.endpoint.as_deref(), Some("http://file:1"));
        assert!(c.offline && c.allow_other && c.daemon);
        assert_eq!(c.read_timeout, Duration::from_secs(5));
        assert_eq!(c.revalidate, Duration::from_secs(7));
        assert_eq!(c.chunk_size, 1 << 20);
        assert_eq!(c.max_connections, 3);
        assert_eq!(c.max_inflight_bytes, 48 << 20);
        assert_eq!(c.threads, 9);
        assert_eq!(c.max_cache_size, Some(2 << 30));
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(!c.load_plans);
        assert!(!c.live_settings().load_plans, "a reload applies it");
        assert_eq!(c.pid_file, Some(PathBuf::from("/file/m.pid")));
        assert_eq!(c.log_file, Some(PathBuf::from("/file/m.log")));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_filter, "modelfs=trace");
        assert_eq!(c.pinned, vec![crate::manifest::RepoId::new("o", "pinned")]);
        let pulls: Vec<_> = c.pull_on_start().map(|r| r.id.to_string()).collect();
        assert_eq!(pulls, ["o/pulled"]);
        assert_eq!(c.config_file, Some(PathBuf::from("/etc/modelfs/config.toml")));
    }

    #[test]
    fn environment_beats_file() {
        let env = [
            ("MODELFS_STORE", "/env/store"),
            ("HF_ENDPOINT", "http://env:2"),
            ("HF_HUB_OFFLINE", "0"),
            ("RUST_LOG", "warn"),
        ];
        let c = resolve(&["/m"], Some(FULL), &env);
        assert_eq!(c.store, PathBuf::from("/env/store"));
        // Left to the Hub client, which reads HF_ENDPOINT itself.
        assert_eq!(c.endpoint, None);
        assert!(!c.offline, "HF_HUB_OFFLINE=0 turns off the file's offline = true");
        assert_eq!(c.log_filter, "warn");
        // An empty variable is unset, as huggingface_hub reads them.
        let empty = [("MODELFS_STORE", ""), ("HF_ENDPOINT", ""), ("HF_HUB_OFFLINE", "")];
        let c = resolve(&["/m"], Some(FULL), &empty);
        assert_eq!(c.store, PathBuf::from("/file/store"));
        assert_eq!(c.endpoint.as_deref(), Some("http://file:1"));
        assert!(c.offline);
        // A RUST_LOG that does not parse falls through to the file.
        let c = resolve(&["/m"], Some(FULL), &[("RUST_LOG", "modelfs=loud")]);
        assert_eq!(c.log_filter, "modelfs=trace");
    }

    #[test]
    fn flags_beat_environment_and_file() {
        let env = [("MODELFS_STORE", "/env/store"), ("HF_ENDPOINT", "http://env:2")];
        let flags = [
            "/m",
            "--store=/flag/store",
            "--endpoint=http://flag:3",
            "--offline",
            "--read-timeout=11",
            "--revalidate=0",
            "--chunk-size=2M",
            "--max-connections=4",
            "--max-inflight-bytes=16M",
            "--threads=1",
            "--max-cache-size=3G",
            "--metrics-addr=127.0.0.1:9200",
            "--pid-file=/flag/m.pid",
            "--log-file=/flag/m.log",
            "--log-format=text",
        ];
        let c = resolve(&flags, Some(FULL), &env);
        assert_eq!(c.store, PathBuf::from("/flag/store"));
        assert_eq!(c.endpoint.as_deref(), Some("http://flag:3"));
        assert!(c.offline);
        assert_eq!(c.read_timeout, Duration::from_secs(11));
        assert_eq!(c.revalidate, Duration::ZERO);
        assert_eq!(c.chunk_size, 2 << 20);
        assert_eq!(c.max_connections, 4);
        assert_eq!(c.max_inflight_bytes, 16 << 20);
        assert_eq!(c.threads, 1);
        assert_eq!(c.max_cache_size, Some(3 << 30));
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9200".parse().unwrap()));
        assert_eq!(c.pid_file, Some(PathBuf::from("/flag/m.pid")));
        assert_eq!(c.log_file, Some(PathBuf::from("/flag/m.log")));
        assert_eq!(c.log_format, LogFormat::Text);
        // --foreground beats the file's daemon = true.
        assert!(!resolve(&["/m", "--foreground"], Some(FULL), &[]).daemon);
        assert!(
            Cli::try_parse_from(["modelfs", "mount", "/m", "--daemon", "--foreground"]).is_err()
        );
        assert!(!resolve(&["/m", "--no-load-plans"], None, &[]).load_plans);
        assert!(resolve(&["/m"], None, &[]).push_pages, "pushes are on unless turned off");
        assert!(!resolve(&["/m", "--no-push-pages"], None, &[]).push_pages);
        assert!(!resolve(&["/m"], Some("push_pages = false"), &[]).push_pages);
        // --offline beats HF_HUB_OFFLINE=0.
        let c = resolve(&["/m", "--offline"], None, &[("HF_HUB_OFFLINE", "0")]);
        assert!(c.offline);
    }

    #[test]
    fn daemon_defaults_its_files() {
        let env = [("HOME", "/h"), ("XDG_RUNTIME_DIR", "/run/user/7")];
        let c = resolve(&["/models/x", "--daemon", "--store=/s"], None, &env);
        assert_eq!(c.log_file, Some(PathBuf::from("/s/modelfs.log")));
        assert_eq!(c.pid_file, Some(PathBuf::from("/run/user/7/modelfs/models-x.pid")));
        let c = MountArgs::try_parse_from_mount(&["/models", "--daemon", "--store=/s"])
            .resolve_with(None, env_of(&env), true);
        assert_eq!(c.pid_file, Some(PathBuf::from("/run/modelfs/models.pid")));
        let c = resolve(&["/models", "--daemon", "--store=/s"], None, &[]);
        assert_eq!(c.pid_file, Some(PathBuf::from("/s/models.pid")));
        // The file's store is where the default log goes.
        let c = resolve(&["/m", "--daemon"], Some("store = \"/fs\""), &[]);
        assert_eq!(c.log_file, Some(PathBuf::from("/fs/modelfs.log")));
    }

    #[test]
    fn reload_sees_restart_only_changes() {
        let old = resolve(&["/m", "--threads=2"], Some("max_cache_size = \"1G\"\n"), &[]);
        let new = resolve(
            &["/m", "--threads=2"],
            Some("max_cache_size = \"2G\"\nthreads = 8\nrevalidate = 5\n[[repo]]\nid = \"o/r\"\npin = true\n"),
            &[],
        );
        // threads is set on the command line: the file cannot change it; revalidate, like
        // the bound and the pins, applies live.
        assert!(old.needs_restart(&new).is_empty(), "{:?}", old.needs_restart(&new));
        assert_eq!(new.live_settings().revalidate, Duration::from_secs(5));
        assert_eq!(new.live_settings().max_cache_size, Some(2 << 30));
        assert_eq!(new.live_settings().pinned, [crate::manifest::RepoId::new("o", "r")]);
        assert!(old.needs_restart(&old).is_empty());
    }

    #[test]
    fn store_commands_merge_the_same_way() {
        let args = StoreArgs { store: None, config: None };
        let f = file("store = \"/fs\"\n[[repo]]\nid = \"o/r\"\npin = true\n");
        let c = args.resolve_with(f.clone(), env_of(&[("HOME", "/h")]), &[]);
        assert_eq!(c.store, PathBuf::from("/fs"));
        assert_eq!(c.origin, StoreOrigin::ConfigFile("/etc/modelfs/config.toml".into()));
        assert_eq!(c.pinned(), [crate::manifest::RepoId::new("o", "r")]);
        let c = args.resolve_with(f.clone(), env_of(&[("MODELFS_STORE", "/env")]), &[]);
        assert_eq!((c.store, c.origin), (PathBuf::from("/env"), StoreOrigin::Environment));
        let flag = StoreArgs { store: Some("/flag".into()), config: None };
        let c = flag.resolve_with(f, env_of(&[("MODELFS_STORE", "/env")]), &[]);
        assert_eq!((c.store, c.origin), (PathBuf::from("/flag"), StoreOrigin::Flag));
    }

    #[test]
    fn store_commands_find_the_store_of_the_running_mount() {
        use crate::mounts::LiveMount;
        let args = StoreArgs { store: None, config: None };
        let home = [("HOME", "/h")];
        let mount = |mp: &str, store: &str, pid| LiveMount {
            pid,
            mountpoint: mp.into(),
            store: store.into(),
            passthrough: None,
            traffic: None,
        };
        let one = [mount("/models", "/srv/store", 42)];
        let c = args.resolve_with(None, env_of(&home), &one);
        assert_eq!(c.store, PathBuf::from("/srv/store"));
        assert_eq!(c.origin.to_string(), "the store of the mount at /models (pid 42)");
        // Two mounts on one store: still that store.
        let two = [mount("/a", "/srv/store", 1), mount("/b", "/srv/store", 2)];
        assert_eq!(args.resolve_with(None, env_of(&home), &two).store, PathBuf::from("/srv/store"));
        // Two stores: nothing to choose by; the default, as without a mount.
        let split = [mount("/a", "/s1", 1), mount("/b", "/s2", 2)];
        let c = args.resolve_with(None, env_of(&home), &split);
        assert_eq!((c.store, c.origin), (PathBuf::from("/h/.cache/modelfs"), StoreOrigin::Default));
        // What the user says comes first.
        let c = args.resolve_with(None, env_of(&[("MODELFS_STORE", "/env")]), &one);
        assert_eq!(c.store, PathBuf::from("/env"));
        let c = args.resolve_with(file("store = \"/fs\""), env_of(&home), &one);
        assert_eq!(c.store, PathBuf::from("/fs"));
    }

    #[test]
    fn escaping_like_systemd() {
        assert_eq!(escape_path(Path::new("/models")), "models");
        assert_eq!(escape_path(Path::new("/")), "-");
        assert_eq!(escape_path(Path::new("/mnt/my-models/")), "mnt-my\\x2dmodels");
        assert_eq!(escape_path(Path::new("/.hidden/a.b")), "\\x2ehidden-a.b");
        assert_eq!(escape_path(Path::new("//a//b")), "a-b");
    }

    proptest::proptest! {
        #[test]
        fn escaped_paths_are_one_safe_name(path in "(/[a-z.\\- ]{0,6}){1,4}") {
            let e = escape_path(Path::new(&path));
            proptest::prop_assert!(!e.is_empty() && !e.contains('/') && e != "." && e != "..");
            proptest::prop_assert!(e.bytes().all(|b| b.is_ascii_graphic()), "{}", e);
        }
    }

    impl MountArgs {
        fn try_parse_from_mount(args: &[&str]) -> MountArgs {
            let argv = ["modelfs", "mount"].iter().chain(args).copied();
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Mount(m) => m,
                other => panic!("parsed {other:?}"),
            }
        }
    }
}

//! The command line (SPEC §6): clap definitions, turned into typed configuration. Defaults
//! that come from the environment (`MODELFS_STORE`, `HF_HUB_OFFLINE`, `XDG_CACHE_HOME`) are
//! applied here, so the rest of the program sees one resolved value per setting.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::store::DEFAULT_CHUNK_SIZE;

#[derive(Parser, Debug)]
#[command(
    name = "modelfs",
    version,
    about = "HuggingFace Hub model repos as a lazily fetched, read-only filesystem"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount the model namespace at MOUNTPOINT and serve it in the foreground until
    /// SIGINT/SIGTERM (or `modelfs unmount`).
    Mount(MountArgs),
    /// Unmount a modelfs mount (also clears a mount left by a killed daemon).
    Unmount { mountpoint: PathBuf },
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Where to mount, e.g. /models. Created if missing.
    pub mountpoint: PathBuf,
    /// Chunk store directory [default: $MODELFS_STORE, else $XDG_CACHE_HOME/modelfs, else ~/.cache/modelfs].
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Hub endpoint [default: $HF_ENDPOINT, else https://huggingface.co].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Never contact the Hub: serve what the store has (also set by HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Let users other than the one who mounted read the mount (FUSE allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Seconds a read may wait for the Hub, retries included, before it fails with EIO.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub read_timeout: u64,
    /// Seconds a resolved branch is trusted before the Hub is asked again.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub revalidate: u64,
    /// Chunk size of a NEW store (an existing store keeps its own), e.g. 8M, 4194304.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: u64,
    /// Most parallel connections to one host (the Hub, or its CDN).
    #[arg(long, default_value_t = 16)]
    pub max_connections: usize,
    /// Most bytes read-ahead may hold in flight (each parallel fetch buffers one chunk), e.g. 64M.
    #[arg(long, default_value_t = crate::fetch::DEFAULT_MAX_INFLIGHT_BYTES, value_parser = parse_size, value_name = "SIZE")]
    pub max_inflight_bytes: u64,
    /// FUSE worker threads. Reads the store can answer run on them; everything that waits
    /// for the network runs on the async runtime instead.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

/// Everything `mount` needs, resolved.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub store: PathBuf,
    pub endpoint: Option<String>,
    pub offline: bool,
    pub allow_other: bool,
    pub read_timeout: Duration,
    pub revalidate: Duration,
    pub chunk_size: u64,
    pub max_connections: usize,
    pub max_inflight_bytes: u64,
    pub threads: usize,
}

impl MountArgs {
    pub fn resolve(self, env: impl Fn(&str) -> Option<String>) -> MountConfig {
        MountConfig {
            store: self.store.unwrap_or_else(|| default_store(&env)),
            offline: self.offline || env("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            mountpoint: self.mountpoint,
            endpoint: self.endpoint,
            allow_other: self.allow_other,
            read_timeout: Duration::from_secs(self.read_timeout.max(1)),
            revalidate: Duration::from_secs(self.revalidate),
            chunk_size: self.chunk_size,
            max_connections: self.max_connections.max(1),
            max_inflight_bytes: self.max_inflight_bytes,
            threads: self.threads.max(1),
        }
    }
}

/// `$MODELFS_STORE`, else `$XDG_CACHE_HOME/modelfs`, else `~/.cache/modelfs` (SPEC §4).
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
fn truthy(v: &str) -> bool {
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

    #[test]
    fn offline_from_env() {
        let args = MountArgs::try_parse_from_mount(&["/m"]);
        let cfg = args.clone().resolve(|k| (k == "HF_HUB_OFFLINE").then(|| "1".to_string()));
        assert!(cfg.offline);
        let cfg = args.resolve(|k| (k == "HF_HUB_OFFLINE").then(|| "0".to_string()));
        assert!(!cfg.offline);
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

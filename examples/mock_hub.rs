//! The mock Hub of the test suite as a standalone server, for scripts (benchmarks, manual
//! runs of modelfs or huggingface_hub against a known origin):
//!
//!     cargo run --release --example mock_hub -- --dir DIR --port 8080 [--cdn-port 0] [--lfs-threshold BYTES]
//!         [--cdn-url http://127.0.0.1:8081] [--gated ORG/REPO]...
//!
//! Every `DIR/<org>/<repo>/` becomes a repo with one commit on `main`. Prints one line,
//! `endpoint http://127.0.0.1:PORT`, once it answers, and serves until SIGINT or SIGTERM.

#[path = "../tests/support/mock_hub.rs"]
mod mock_hub;

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use mock_hub::{MockConfig, MockHub, DEFAULT_LFS_THRESHOLD};

#[derive(Parser)]
#[command(about = "Serve DIR/<org>/<repo>/** as a mock HuggingFace Hub")]
struct Args {
    /// Directory of `<org>/<repo>/` folders.
    #[arg(long)]
    dir: PathBuf,
    /// Port of the Hub origin on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Port of the CDN origin, addressed as localhost (0 = any free port).
    #[arg(long, default_value_t = 0)]
    cdn_port: u16,
    /// Files of at least this many bytes are stored in LFS (served through the CDN).
    #[arg(long, default_value_t = DEFAULT_LFS_THRESHOLD)]
    lfs_threshold: u64,
    /// Page size of tree listings.
    #[arg(long, default_value_t = 1000)]
    page_size: usize,
    /// Redirect LFS downloads to `URL/lfs/<sha256>?X-Amz-...` instead of the mock's own CDN,
    /// e.g. an nginx serving the same blobs by sha256 (scripts/bench.sh does this).
    #[arg(long, value_name = "URL")]
    cdn_url: Option<String>,
    /// Milliseconds every answer of the mock's own CDN waits before its first byte (a real
    /// CDN's time to first byte).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    cdn_first_byte_ms: u64,
    /// Bytes per second each answer of the mock's own CDN is paced at (a per-connection cap).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    cdn_rate: Option<u64>,
    /// Make ORG/REPO gated: its files are served only with the mock's valid token,
    /// `hf_mock_token` (repeatable).
    #[arg(long, value_name = "ORG/REPO")]
    gated: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = MockConfig {
        page_size: args.page_size,
        cdn_base: args.cdn_url,
        cdn_first_byte: std::time::Duration::from_millis(args.cdn_first_byte_ms),
        cdn_rate: args.cdn_rate,
        ..MockConfig::default()
    };
    let hub = MockHub::start_on(config, args.port, args.cdn_port)?;
    let ids = hub.load_dir_with_threshold(&args.dir, args.lfs_threshold)?;
    for id in &args.gated {
        if !ids.contains(id) {
            return Err(format!("--gated {id}: no such repo in {}", args.dir.display()).into());
        }
        hub.update_repo(id, |repo| repo.gated = true);
    }
    eprintln!(
        "mock_hub: serving {} repo(s): {}; LFS redirects to {}",
        ids.len(),
        ids.join(", "),
        hub.cdn_base()
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "endpoint {}", hub.endpoint())?;
    stdout.flush()?;
    drop(stdout);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    hub.stop();
    Ok(())
}

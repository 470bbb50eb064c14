//! `modelfs`: parse the command line, set up logging, run. Nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use modelfs::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

/// Allocations from this size up are mapped and unmapped on their own. glibc otherwise raises
/// its threshold after the first 8 MiB chunk buffer is freed and then keeps every later one
/// in its heap, so the daemon's resident memory ratchets up to the peak of all buffers ever
/// in flight instead of following them down.
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

fn main() -> ExitCode {
    // SAFETY: called before any other thread exists; mallopt only sets allocator tunables.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Mount(args) => modelfs::daemon::mount(args.resolve(|k| std::env::var(k).ok())),
        Command::Unmount { mountpoint } => modelfs::daemon::unmount(&mountpoint),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelfs: {e}");
            ExitCode::FAILURE
        }
    }
}

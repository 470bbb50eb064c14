//! `modelfs`: parse the command line, set up logging, run. Nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use modelfs::cli::{Cli, Command, MountArgs, DEFAULT_LOG_FILTER};
use modelfs::config::LogFormat;
use modelfs::daemon::{Logging, Readiness};

/// At most this many malloc arenas. glibc gives each busy thread its own arena, and every
/// arena keeps the 8 MiB chunk buffers it once held: with the FUSE threads, the runtime's
/// workers and its blocking pool that ratchets resident memory up to ~200 MiB while
/// streaming. Two arenas keep the buffers reused instead (measured on a cold 1 GiB stream
/// from a local origin: resident anonymous memory after it 62 MiB instead of 111 MiB, time
/// 2.8 s instead of 2.4 s). Pinning the mmap threshold instead (every buffer mapped and
/// unmapped) kept memory lowest but made the same stream take 5.5 s, every page faulted in
/// anew.
const MALLOC_ARENAS: libc::c_int = 2;

fn main() -> ExitCode {
    // SAFETY: called before any other thread exists; mallopt only sets allocator tunables.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Mount(args) => return mount(args),
        other => other,
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| tracing_subscriber::EnvFilter::builder().parse(f).is_ok())
        .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_string());
    if let Err(e) = Logging::init(LogFormat::Text, &filter, None) {
        return fail(&e);
    }
    let result: Result<(), Box<dyn std::error::Error>> = match command {
        Command::Mount(_) => unreachable!("handled above"),
        Command::Unmount { mountpoint } => {
            modelfs::daemon::unmount(&mountpoint).map_err(Into::into)
        }
        Command::Pull(args) => modelfs::commands::pull(args).map_err(Into::into),
        Command::Status(args) => modelfs::commands::status(args).map_err(Into::into),
        Command::Verify(args) => modelfs::commands::verify(args).map_err(Into::into),
        Command::Gc(args) => modelfs::commands::gc(args).map_err(Into::into),
        Command::Import(args) => modelfs::commands::import(args).map_err(Into::into),
        Command::Remove(args) => modelfs::commands::remove(args).map_err(Into::into),
        Command::Csi(args) => modelfs::commands::csi(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&*e),
    }
}

/// `mount`: configuration errors go to the terminal, before detaching; everything after to the
/// log (and, detached, through the readiness pipe to the terminal that waits).
fn mount(args: MountArgs) -> ExitCode {
    let cfg = match args.resolve(|k| std::env::var(k).ok()) {
        Ok(cfg) => cfg,
        Err(e) => return fail(&e),
    };
    // Before the runtime, the FUSE workers or anything else starts a thread.
    let readiness = if cfg.daemon {
        match modelfs::daemon::daemonize() {
            Ok(r) => r,
            Err(e) => return fail(&e),
        }
    } else {
        Readiness::none()
    };
    let logging = match Logging::init(cfg.log_format, &cfg.log_filter, cfg.log_file.as_deref()) {
        Ok(logging) => logging,
        Err(e) => {
            readiness.fail(&e.to_string());
            return fail(&e);
        }
    };
    match modelfs::daemon::mount(cfg, readiness, logging) {
        Ok(()) => ExitCode::SUCCESS,
        // The log goes to standard error too: say it once, as a sentence to a person at a
        // terminal, as a log line to whatever collects the log (a file, the journal).
        Err(e) if std::io::IsTerminal::is_terminal(&std::io::stderr()) => fail(&e),
        Err(e) => {
            tracing::error!(error = %e, "mount failed");
            ExitCode::FAILURE
        }
    }
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("modelfs: {e}");
    ExitCode::FAILURE
}

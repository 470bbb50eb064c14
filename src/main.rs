//! `modelfs`: parse the command line, set up logging, run. Nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use modelfs::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
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

//! Running the Python side of a test (tests/python/*.py) as a user would: to completion or a
//! time limit, with its output kept for the failure message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::mount::temp_dir;

/// `tests/python/NAME`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name)
}

/// Run `cmd` (a `python3` command line the caller built) to completion within `limit`; its
/// stdout. Panics with its output, and `context` (e.g. the daemon's log), when it fails or
/// hangs; `what` names it in the message.
pub fn run(mut cmd: Command, what: &str, limit: Duration, context: impl Fn() -> String) -> String {
    let dir = temp_dir("python-run");
    let (out_path, err_path) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("python3 cannot be run ({e}): run scripts/setup.sh"),
    };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!(
            "{what} failed ({s}):\n{stdout}{stderr}\n{}\n(missing packages: run scripts/setup.sh)",
            context()
        ),
        None => panic!("{what} did not finish in {limit:?}:\n{stdout}{stderr}\n{}", context()),
    }
}

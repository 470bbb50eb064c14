//! Who may read what (doc/OPERATIONS.md, "Who may read what"), on a real `--allow-other` mount
//! read by two unprivileged users the test creates: the kernel enforces the owner, group and
//! mode modelfs reports, on open, on listing and on xattrs; the default lets everyone read;
//! `restrict_gated` keeps gated repos to the mount's uid; SIGHUP moves a repo to another group
//! without a remount; neither the token nor repo names leak through the mount or /metrics.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use support::metrics::{get, metrics_addr};
use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{run, temp_dir, wait_for, Mounted};

const TOKEN: &str = "hf_mock_token";

/// A test user: its name, uid and primary group's gid.
#[derive(Clone, Debug)]
struct User {
    name: &'static str,
    gid: u32,
}

/// `modelfs-alice` (group `modelfs-team-a`) and `modelfs-bob` (group `modelfs-team-b`),
/// created once per run if they do not exist (no home, no shell).
fn users() -> &'static (User, User) {
    static USERS: OnceLock<(User, User)> = OnceLock::new();
    USERS.get_or_init(|| {
        let make = |name: &'static str, group: &str| {
            if Command::new("getent").args(["group", group]).output().unwrap().stdout.is_empty() {
                run("groupadd", &[group]);
            }
            if !Command::new("id").arg(name).output().unwrap().status.success() {
                run("useradd", &["-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", name]);
            }
            let gid = run("id", &["-g", name]).trim().parse().unwrap();
            User { name, gid }
        };
        (make("modelfs-alice", "modelfs-team-a"), make("modelfs-bob", "modelfs-team-b"))
    })
}

/// Run `cmd` as `user` (its uid, its groups); `Ok(stdout)` or `Err(stderr)`.
fn as_user(user: &User, cmd: &[&str]) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args(["--reuid", user.name, "--regid", &user.gid.to_string(), "--init-groups", "--"])
        .args(cmd)
        .output()
        .expect("setpriv");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What `user` may do with a repo: read a file, list the repo, read the file's xattr.
fn can(user: &User, m: &Mounted, repo: &str) -> [bool; 3] {
    let file = m.path(&format!("{repo}/all/config.json"));
    let dir = m.path(repo);
    let denied = |r: Result<String, String>| match r {
        Ok(_) => true,
        Err(e) if e.contains("Permission denied") => false,
        Err(e) => panic!("{} on {repo}: not a permission error: {e}", user.name),
    };
    [
        denied(as_user(user, &["cat", file.to_str().unwrap()])),
        denied(as_user(user, &["ls", dir.to_str().unwrap()])),
        denied(as_user(user, &["getfattr", "-n", "user.modelfs.status", file.to_str().unwrap()])),
    ]
}

fn hub() -> MockHub {
    let hub = MockHub::start(MockConfig::default());
    for id in ["team/private-model", "pub/model", "gated/model"] {
        let mut repo = MockRepo::new(
            id,
            vec![
                MockFile::git("config.json", format!("{{\"repo\": \"{id}\"}}").into_bytes()),
                MockFile::lfs("weights.bin", vec![3; 5000]),
            ],
        );
        repo.gated = id.starts_with("gated/");
        hub.add_repo(repo);
    }
    hub
}

fn write_config(path: &Path, gid: u32) {
    let text =
        format!("restrict_gated = true\n\n[[repo]]\nid = \"team/*\"\ngid = {gid}\nmode = 0o440\n");
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_kernel_enforces_who_may_read_each_repo() {
    let (alice, bob) = users();
    let hub = hub();
    let dir = temp_dir("access");
    let config = dir.join("config.toml");
    write_config(&config, alice.gid);
    let args = ["--allow-other", "--config", config.to_str().unwrap(), "--metrics-addr", "0"];
    let m = Mounted::start_env(&hub.endpoint(), &dir.join("store"), &args, &[("HF_TOKEN", TOKEN)]);
    // The mount's uid (root) reads everything, which also resolves each repo.
    for repo in ["team/private-model", "pub/model", "gated/model"] {
        assert!(std::fs::read(m.path(&format!("{repo}/all/config.json"))).is_ok(), "{repo}");
    }
    assert_eq!(can(alice, &m, "team/private-model"), [true; 3], "alice is in the repo's group");
    assert_eq!(can(bob, &m, "team/private-model"), [false; 3], "bob is not");
    // No rule for a public repo: everyone reads it.
    assert_eq!(can(alice, &m, "pub/model"), [true; 3]);
    assert_eq!(can(bob, &m, "pub/model"), [true; 3]);
    // restrict_gated: a gated repo no rule names is the mount's uid's alone.
    assert_eq!(can(alice, &m, "gated/model"), [false; 3]);
    assert_eq!(can(bob, &m, "gated/model"), [false; 3]);
    let mode = run(
        "stat",
        &["-c", "%a %u %g", m.path("team/private-model/all/weights.bin").to_str().unwrap()],
    );
    assert_eq!(mode.trim(), format!("440 0 {}", alice.gid));
    // The cache view follows the same rules.
    let hf = m.path(".hf-cache/models--team--private-model");
    assert!(as_user(alice, &["ls", hf.to_str().unwrap()]).is_ok());
    assert!(as_user(bob, &["ls", hf.to_str().unwrap()]).unwrap_err().contains("Permission denied"));

    // SIGHUP with the repo given to bob's group: no remount.
    write_config(&config, bob.gid);
    run("kill", &["-HUP", &m.pid().to_string()]);
    wait_for("the new group to apply", Duration::from_secs(10), || {
        can(bob, &m, "team/private-model") == [true; 3]
    });
    assert_eq!(can(alice, &m, "team/private-model"), [false; 3], "alice lost it");
    assert!(m.log().contains("changed=access"), "{}", m.log());

    // Nothing else leaks: no xattr carries the token, /metrics names no repo or path.
    for repo in ["team/private-model", "pub/model", "gated/model"] {
        let dump = run(
            "getfattr",
            &["-d", "-m", "-", m.path(&format!("{repo}/all/config.json")).to_str().unwrap()],
        );
        assert!(!dump.contains(TOKEN), "{dump}");
    }
    let metrics = get(&metrics_addr(&m), "/metrics").unwrap().body;
    for leak in [TOKEN, "team", "private-model", "gated", "pub/model", "config.json", "weights"] {
        assert!(!metrics.contains(leak), "/metrics shows {leak:?}");
    }
    assert!(!m.log().contains(TOKEN), "the log shows the token");
}

#[test]
fn by_default_every_user_reads_every_repo() {
    let (alice, bob) = users();
    let hub = hub();
    let dir = temp_dir("access-default");
    let m = Mounted::start_env(
        &hub.endpoint(),
        &dir.join("store"),
        &["--allow-other"],
        &[("HF_TOKEN", TOKEN)],
    );
    for repo in ["team/private-model", "pub/model", "gated/model"] {
        assert_eq!(can(alice, &m, repo), [true; 3], "{repo}");
        assert_eq!(can(bob, &m, repo), [true; 3], "{repo}");
    }
    let mode = run("stat", &["-c", "%a", m.path("pub/model/all").to_str().unwrap()]);
    assert_eq!(mode.trim(), "555");
}

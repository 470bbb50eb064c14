//! `modelfs import` and `modelfs remove` (doc/SEMANTICS.md, "Imported repos") against real
//! mounts: an adapter a finetune job writes appears in a running mount at once, is read by
//! path with `safetensors`, never costs a Hub request, survives `gc`, moves on re-import
//! while open files keep their commit, goes on remove, and with a shared tier shows on a
//! second node that never had it.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{errno, getfattr, temp_dir, wait_for, Mounted};

/// Long enough for a kernel entry cached for a second to expire, and for a loaded machine.
const VISIBLE: Duration = Duration::from_secs(10);

fn modelfs(args: &[&str], store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .args(args)
        .arg("--store")
        .arg(store)
        .env_remove("HF_TOKEN")
        .env_remove("MODELFS_STORE")
        .output()
        .expect("run modelfs")
}

fn ok(out: Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "modelfs failed:\n{text}");
    text
}

fn failed(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "modelfs succeeded where it must not:\n{text}");
    text
}

/// Run python with `code`; its stdout. The test needs numpy and safetensors
/// (tests/python/requirements.txt, installed by scripts/setup.sh).
fn python(code: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(code).args(args).output().expect("python3");
    assert!(
        out.status.success(),
        "python failed (run scripts/setup.sh for its packages):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A LoRA adapter as peft writes it: adapter_config.json and adapter_model.safetensors with
/// A and B matrices of a few layers; `seed` changes every weight.
fn write_adapter(dir: &Path, seed: u32) {
    std::fs::create_dir_all(dir).unwrap();
    python(
        r#"
import json, sys, numpy as np
from safetensors.numpy import save_file
out, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
tensors = {}
for layer in range(4):
    for proj in ("q_proj", "v_proj"):
        base = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
        tensors[f"{base}.lora_A.weight"] = rng.standard_normal((8, 256), dtype=np.float32)
        tensors[f"{base}.lora_B.weight"] = rng.standard_normal((256, 8), dtype=np.float32)
save_file(tensors, f"{out}/adapter_model.safetensors")
json.dump({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "seed": seed,
           "target_modules": ["q_proj", "v_proj"]}, open(f"{out}/adapter_config.json", "w"))
"#,
        &[dir.to_str().unwrap(), &seed.to_string()],
    );
}

/// Whether the safetensors file at `mounted` holds exactly the tensors of the one at `disk`
/// (loaded by safetensors itself, as an inference server loads an adapter by path).
fn same_tensors(mounted: &Path, disk: &Path) -> bool {
    python(
        r#"
import sys, numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
print(sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a))
"#,
        &[mounted.to_str().unwrap(), disk.to_str().unwrap()],
    ) == "True"
}

fn hub_with_a_model() -> MockHub {
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new(
        "base/model",
        vec![MockFile::git("config.json", b"{}".to_vec()), MockFile::lfs("w.bin", vec![7; 4096])],
    ));
    hub
}

#[test]
fn an_adapter_imported_while_mounted_is_served_at_once_and_follows_reimport_and_remove() {
    let hub = hub_with_a_model();
    let dir = temp_dir("import");
    let store = dir.join("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", "1M"]);
    let adapter = m.path("adapters/lora-1/all/adapter_model.safetensors");
    // Looked up before it exists: ENOENT from the Hub, remembered for a few seconds.
    assert_eq!(std::fs::metadata(&adapter).map_err(|e| errno(&e)).err(), Some(libc::ENOENT));

    let job = dir.join("job-output");
    write_adapter(&job, 1);
    let said = ok(modelfs(&["import", job.to_str().unwrap(), "--as", "adapters/lora-1"], &store));
    assert!(said.contains("adapters/lora-1@main -> ") && said.contains("(new): 2 files"), "{said}");
    hub.clear_requests();

    // At once: no remount, no wait.
    assert!(same_tensors(&adapter, &job.join("adapter_model.safetensors")));
    let config = std::fs::read(m.path("adapters/lora-1/all/adapter_config.json")).unwrap();
    assert_eq!(config, std::fs::read(job.join("adapter_config.json")).unwrap());
    assert_eq!(m.names("adapters"), ["lora-1"]);
    assert!(m.names("").contains(&"adapters".to_string()));
    assert_eq!(getfattr(&adapter, "user.modelfs.status").unwrap(), "verified");
    let asked: Vec<_> =
        hub.requests().into_iter().filter(|r| r.path_and_query.contains("adapters")).collect();
    assert!(asked.is_empty(), "the Hub was asked about an imported repo: {asked:?}");
    let status = ok(modelfs(&["status"], &store));
    assert!(status.contains("adapters/lora-1 (imported, local)"), "{status}");
    // In the huggingface_hub cache view too, by repo id.
    let hf = m.path(".hf-cache/models--adapters--lora-1");
    let commit = std::fs::read_to_string(hf.join("refs/main")).unwrap();
    assert!(said.contains(&format!("-> {}", &commit[..12])), "{said} / {commit}");
    let in_view = hf.join(format!("snapshots/{commit}/adapter_model.safetensors"));
    assert!(same_tensors(&in_view, &job.join("adapter_model.safetensors")));

    // Never evicted, whatever the bound.
    ok(modelfs(&["gc", "--max-cache-size", "1"], &store));
    assert!(same_tensors(&adapter, &job.join("adapter_model.safetensors")));

    // Re-import of changed weights moves the branch; a file open before keeps its commit.
    let before = std::fs::read(&adapter).unwrap();
    let open = std::fs::File::open(&adapter).unwrap();
    write_adapter(&job, 2);
    let said = ok(modelfs(&["import", job.to_str().unwrap(), "--as", "adapters/lora-1"], &store));
    assert!(said.contains("(moved from "), "{said}");
    let after = std::fs::read(job.join("adapter_model.safetensors")).unwrap();
    assert_ne!(before, after);
    wait_for("the new commit in the mount", VISIBLE, || std::fs::read(&adapter).unwrap() == after);
    assert!(same_tensors(&adapter, &job.join("adapter_model.safetensors")));
    let mut kept = Vec::new();
    use std::io::Read;
    (&open).read_to_end(&mut kept).unwrap();
    assert!(kept == before, "an open file changed commit under its reader");
    drop(open);
    // Importing the same files again changes nothing.
    let said = ok(modelfs(&["import", job.to_str().unwrap(), "--as", "adapters/lora-1"], &store));
    assert!(said.contains("(unchanged)") && said.contains("0 B stored now"), "{said}");

    // A second branch of the same repo.
    ok(modelfs(
        &["import", job.to_str().unwrap(), "--as", "adapters/lora-1", "--revision", "v2"],
        &store,
    ));
    assert!(m.path("adapters/lora-1@v2/all/adapter_config.json").is_file());

    // Remove: gone from the mount within a second or so, and from the listing at once.
    let said = ok(modelfs(&["remove", "adapters/lora-1"], &store));
    assert!(said.starts_with("removed adapters/lora-1 (2 refs, 2 commits)"), "{said}");
    assert_eq!(m.names("adapters"), Vec::<String>::new());
    wait_for("the removed repo to go", VISIBLE, || !adapter.exists());
    let said = failed(modelfs(&["remove", "base/model"], &store));
    assert!(said.contains("not an imported repo"), "{said}");
    assert!(!m.log().contains("ERROR"), "{}", m.log());
}

#[test]
fn bad_imports_are_refused_with_a_clear_error_and_change_nothing() {
    let hub = hub_with_a_model();
    let dir = temp_dir("import-bad");
    let store = dir.join("store");
    ok(Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .args(["pull", "base/model", "--endpoint", &hub.endpoint(), "--store"])
        .arg(&store)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap());
    let status = ok(modelfs(&["status", "--json"], &store));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.json"), b"{}").unwrap();
    let outside = dir.join("secret.txt");
    std::fs::write(&outside, b"token").unwrap();
    let import = |dir: &Path, name: &str| {
        failed(modelfs(&["import", dir.to_str().unwrap(), "--as", name], &store))
    };

    assert!(import(&dir.join("missing"), "t/a").contains("No such file or directory"));
    assert!(import(&src, "not-a-repo-id").contains("is not ORG/REPO"));
    assert!(import(&src, "t/a..b").contains("is not ORG/REPO"));
    assert!(import(&src, "base/model").contains("is a repo of the Hub in this store"));
    let said = failed(modelfs(
        &["import", src.to_str().unwrap(), "--as", "t/a", "--revision", "a..b"],
        &store,
    ));
    assert!(said.contains("is not a branch name"), "{said}");
    std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
    let said = import(&src, "t/a");
    assert!(said.contains("outside the directory imported"), "{said}");
    std::fs::remove_file(src.join("link")).unwrap();
    let fifo = std::ffi::CString::new(src.join("pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(import(&src, "t/a").contains("a named pipe, not a regular file"));

    assert_eq!(
        ok(modelfs(&["status", "--json"], &store)),
        status,
        "a refused import changed the store"
    );
}

#[test]
fn an_import_written_to_the_tier_shows_on_a_node_that_never_had_it() {
    let hub = hub_with_a_model();
    let dir = temp_dir("import-tier");
    let tier = dir.join("tier");
    let url = format!("file://{}", tier.display());
    // Node 2 mounts with the tier; node 1 (its own store, no mount) imports. Both stores have
    // the default chunk size: chunks are shared by key, and the key includes it.
    let m = Mounted::start(&hub.endpoint(), &dir.join("store-2"), &["--tier", &url]);
    let store_1 = dir.join("store-1");
    let job = dir.join("job");
    write_adapter(&job, 5);
    let said = ok(modelfs(
        &["import", job.to_str().unwrap(), "--as", "adapters/shared", "--tier", &url],
        &store_1,
    ));
    assert!(said.contains("; written to the tier"), "{said}");

    let adapter = m.path("adapters/shared/all/adapter_model.safetensors");
    assert!(same_tensors(&adapter, &job.join("adapter_model.safetensors")));
    let status = ok(modelfs(&["status"], &dir.join("store-2")));
    assert!(
        status.contains("adapters/shared (imported by another node, from the tier)"),
        "{status}"
    );

    // Re-imported on node 1: node 2 follows within a few seconds.
    write_adapter(&job, 6);
    ok(modelfs(
        &["import", job.to_str().unwrap(), "--as", "adapters/shared", "--tier", &url],
        &store_1,
    ));
    let want = std::fs::read(job.join("adapter_model.safetensors")).unwrap();
    wait_for("the re-import on node 2", VISIBLE, || {
        std::fs::read(&adapter).ok().as_ref() == Some(&want)
    });

    // Removed on node 1 (and from the tier): gone on node 2.
    let said = ok(modelfs(&["remove", "adapters/shared", "--tier", &url], &store_1));
    assert!(said.ends_with("; removed from the tier\n"), "{said}");
    wait_for("the removal on node 2", VISIBLE, || !adapter.exists());
    assert!(!m.log().contains("ERROR"), "{}", m.log());
}

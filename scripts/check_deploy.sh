#!/usr/bin/env bash
# Check the deployment artefacts (systemd/, deploy/k8s/) offline, as CI does through
# tests/deploy.rs. Fails on the first problem; prints what it checked.
#
#   1. systemd: `systemd-analyze verify` on modelfs.service and an instance of
#      modelfs@.service, where any message at all (an unknown key, a bad value) is a failure:
#      verify itself only fails on a few errors and merely warns about the rest. Plus an
#      offline `systemd-analyze security` exposure bound, and a guard against the options
#      that would hide the mount from the host (they give the service its own mount
#      namespace).
#   2. Kubernetes: every manifest against the Kubernetes JSON schema of 1.29 (the first
#      release with native sidecars on by default) and of the validator's newest release,
#      in strict mode (unknown fields rejected), with kubernetes-validate from PyPI; then the
#      rules the schema cannot express (Bidirectional needs privileged, probes, the token
#      from a Secret, store bound below the volume's size limit, shared mount layout).
#   3. Both: every `modelfs mount` command line in the units, the environment example and
#      the manifests is parsed by the real binary (`... --help`: clap parses and checks every
#      flag and value before it gets to --help), so a renamed flag breaks this check.
#   Each of the three checks is shown to be able to fail: a broken copy must be rejected.
#
# The binary: $MODELFS_BIN (tests/deploy.rs passes cargo's own), else this script builds
# target/debug/modelfs. It is never run except for --help.
#
# systemd-analyze runs without systemd as PID 1 (in a container, in CI): verify loads units
# from files, not from a running manager. It checks that every Exec*= binary exists, and the
# units name /usr/local/bin/modelfs, which a build machine does not have; so the units are
# verified as copies in a temporary directory with that one path rewritten to the binary
# above. Everything else (directives, specifiers, dependencies on network-online.target and
# multi-user.target from the system's unit directories) is verified as shipped. The
# alternative, `verify --root=DIR`, would need a copy of /bin/kill and of every target
# unit under DIR, and checks no more.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The validator's version is pinned: its bundled schemas are what "validated" means here.
KUBERNETES_VALIDATE_VERSION=1.37.0
# Oldest Kubernetes the manifests support: native sidecars (initContainers[].restartPolicy:
# Always) are beta and on by default from 1.29, GA in 1.33.
K8S_MIN=1.29.0
# Upper bound on `systemd-analyze security` exposure (0-100; the units score 42, "OK").
# Higher would mean a hardening option was dropped.
MAX_EXPOSURE=50

say() { printf 'check_deploy: %s\n' "$*"; }
fail() { printf 'check_deploy: FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools --------------------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null 2>&1; then
    say "installing systemd (for systemd-analyze)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
py=python3
if ! $py -c "import kubernetes_validate, yaml" 2>/dev/null \
    || [ "$($py -m kubernetes_validate --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    say "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    # Debian's own python refuses system-wide installs unless told this is intended.
    if ! $py -m pip install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" 2>"$tmp/pip.log"; then
        if grep -q externally-managed "$tmp/pip.log"; then
            $py -m pip install -q --break-system-packages "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
        else
            cat "$tmp/pip.log" >&2
            fail "pip install kubernetes-validate"
        fi
    fi
fi

bin=${MODELFS_BIN:-}
if [ -z "$bin" ]; then
    say "building modelfs (set MODELFS_BIN to skip)"
    cargo build --quiet --bin modelfs
    target_dir=$(cargo metadata --format-version 1 --no-deps \
        | $py -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    bin="$target_dir/debug/modelfs"
fi
[ -x "$bin" ] || fail "no modelfs binary at $bin"
say "binary $bin; $(systemd-analyze --version | head -n1); kubernetes-validate $($py -m kubernetes_validate --version)"

# --- 1. systemd ---------------------------------------------------------------------------
units=(systemd/modelfs.service systemd/modelfs@.service)
for u in "${units[@]}"; do
    [ -f "$u" ] || fail "missing $u"
    sed "s#/usr/local/bin/modelfs#$bin#g" "$u" >"$tmp/$(basename "$u")"
done
# A template is verified through an instance: mnt-models is /mnt/models.
verify_targets=("$tmp/modelfs.service" "$tmp/modelfs@mnt-models.service")

verify_quiet() { # verify_quiet UNIT...: fails on a non-zero exit or on any message
    local out rc=0
    out=$(systemd-analyze verify "$@" 2>&1) || rc=$?
    if [ "$rc" != 0 ] || [ -n "$out" ]; then
        printf '%s\n' "$out" >&2
        return 1
    fi
}
verify_quiet "${verify_targets[@]}" || fail "systemd-analyze verify"
say "systemd-analyze verify: modelfs.service, modelfs@mnt-models.service: no messages"

# Can fail: an unknown key is only a warning to verify (exit 0), and must still be caught.
mkdir "$tmp/broken"
sed 's/^KillMode=mixed$/KillMode=mixed\nKillModeTypo=mixed/' "$tmp/modelfs.service" >"$tmp/broken/modelfs.service"
if verify_quiet "$tmp/broken/modelfs.service" 2>/dev/null; then
    fail "self-test: verify accepted a unit with an unknown key"
fi

for t in "${verify_targets[@]}"; do
    if ! out=$(systemd-analyze security --offline=yes --threshold="$MAX_EXPOSURE" --no-pager "$t" 2>&1); then
        printf '%s\n' "$out" | tail -n 3 >&2
        fail "systemd-analyze security: $(basename "$t") is above exposure $MAX_EXPOSURE"
    fi
    say "security: $(printf '%s\n' "$out" | grep -o 'Overall exposure level.*' || true)"
done

# Any of these gives the service its own mount namespace, from which systemd propagates no
# mount to the host: modelfs would report READY while /models stays empty for everyone else.
namespaced='ProtectSystem|ProtectHome|PrivateTmp|PrivateDevices|PrivateMounts|PrivateUsers|ReadWritePaths|ReadOnlyPaths|InaccessiblePaths|TemporaryFileSystem|BindPaths|BindReadOnlyPaths|ProtectKernelTunables|ProtectKernelModules|ProtectKernelLogs|ProtectControlGroups|ProtectProc|ProcSubset|DynamicUser|MountFlags|RootDirectory|RootImage'
for u in "${units[@]}"; do
    if grep -En "^[[:space:]]*($namespaced)=" "$u"; then
        fail "$u sets an option that hides the mount from the host (see the unit's comments)"
    fi
    grep -q '^Type=notify$' "$u" || fail "$u: not Type=notify"
done

# The environment example names only variables that modelfs or the units read.
known='HF_TOKEN|HF_TOKEN_PATH|HF_HOME|HF_ENDPOINT|HF_HUB_OFFLINE|RUST_LOG|MODELFS_METRICS_ADDR|MODELFS_OPTS'
if grep -En '^#?[A-Z_]+=' systemd/modelfs.env.example | grep -Ev "^[0-9]+:#?($known)="; then
    fail "systemd/modelfs.env.example sets a variable nothing reads"
fi
say "units: no mount-namespace options; env example: only known variables"

# --- 2. Kubernetes ------------------------------------------------------------------------
manifests=(deploy/k8s/*.yaml)
[ "${#manifests[@]}" -ge 4 ] || fail "expected csi.yaml, daemonset.yaml, secret-example.yaml, sidecar-pod.yaml"
for v in "$K8S_MIN" ""; do
    if ! out=$($py -m kubernetes_validate --strict --quiet ${v:+-k "$v"} "${manifests[@]}" 2>&1); then
        printf '%s\n' "$out" >&2
        fail "kubernetes-validate --strict ${v:-(newest)}"
    fi
done
say "kubernetes-validate --strict: ${manifests[*]} against $K8S_MIN and the newest bundled schema"

# Can fail: a misspelt field must be rejected in strict mode.
sed 's/^\(\s*\)mountPropagation: Bidirectional$/\1mountPropagation: Bidirectional\n\1mountPropogation: Bidirectional/' \
    deploy/k8s/sidecar-pod.yaml >"$tmp/broken/sidecar-pod.yaml"
if $py -m kubernetes_validate --strict --quiet "$tmp/broken/sidecar-pod.yaml" >/dev/null 2>&1; then
    fail "self-test: kubernetes-validate accepted an unknown field"
fi

# What the schema cannot say. Prints one `modelfs ...` argv per line (JSON) for step 3.
$py - "${manifests[@]}" >"$tmp/k8s-argv.jsonl" <<'PY' || fail "manifest rules (above)"
import json, re, sys
import yaml

errors = []
def err(where, msg):
    errors.append(f"{where}: {msg}")

def quantity(q):
    """Kubernetes resource quantity or modelfs size (K/M/G/T, read as binary: the larger)."""
    m = re.fullmatch(r"(\d+)([KMGTE]i?)?B?", str(q).strip(), re.I)
    if not m:
        raise ValueError(q)
    power = {"k": 1, "m": 2, "g": 3, "t": 4, "e": 6}.get((m.group(2) or " ")[0].lower(), 0)
    return int(m.group(1)) * 1024 ** power

def pod_specs(doc):
    kind = doc.get("kind")
    if kind == "Pod":
        yield doc["spec"]
    elif kind in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
        yield doc["spec"]["template"]["spec"]

def flag(args, name):
    return args[args.index(name) + 1] if name in args else None

SECRET_ENV = {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
seen_modelfs = 0
# hostPath directories modelfs mounts below (DaemonSet), and every other container that
# mounts a hostPath: checked against each other once all files are read.
node_dirs = {}
host_mounts = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        name = f"{path} {doc['kind']}/{doc['metadata']['name']}"
        for spec in pod_specs(doc):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            containers = spec.get("initContainers", []) + spec["containers"]
            for c in containers:
                where = f"{name} container {c['name']}"
                privileged = (c.get("securityContext") or {}).get("privileged") is True
                for m in c.get("volumeMounts", []):
                    if m.get("mountPropagation") == "Bidirectional" and not privileged:
                        err(where, f"Bidirectional on {m['name']} needs privileged: true (API server rule)")
                # The Hub token and the tier's S3 keys come from Secrets, never the manifest.
                for e in c.get("env", []):
                    if e["name"] in SECRET_ENV and "value" in e:
                        err(where, f"{e['name']} as a literal value; use valueFrom.secretKeyRef")
                argv = (c.get("command") or []) + (c.get("args") or [])
                if not argv or not argv[0].endswith("modelfs") or argv[1:2] != ["mount"]:
                    # The CSI node plugin's command line is parsed by the binary too.
                    if argv and argv[0].endswith("modelfs") and argv[1:2] == ["csi"]:
                        print(json.dumps(argv[1:]))
                    for m in c.get("volumeMounts", []):
                        hp = (volumes[m["name"]].get("hostPath") or {}).get("path")
                        if hp:
                            host_mounts.append((where, hp, m))
                    continue
                seen_modelfs += 1
                args = argv[1:]
                print(json.dumps(args))
                mountpoint = args[1]
                # The FUSE mount sits strictly below a Bidirectional volume mount.
                shared = [m for m in c.get("volumeMounts", [])
                          if m.get("mountPropagation") == "Bidirectional"
                          and mountpoint.startswith(m["mountPath"].rstrip("/") + "/")]
                if not shared:
                    err(where, f"mountpoint {mountpoint} is not below a Bidirectional volume mount "
                               "(mounting on the volume itself breaks restarts)")
                    continue
                vol = shared[0]["name"]
                hp = (volumes[vol].get("hostPath") or {}).get("path")
                if hp:
                    node_dirs[hp.rstrip("/")] = shared[0]["mountPath"]
                # Everyone else sharing that volume receives mounts (HostToContainer) at the
                # same path, so /mnt/modelfs/models means the same thing in every container.
                for other in containers:
                    if other is c:
                        continue
                    for m in other.get("volumeMounts", []):
                        if m["name"] == vol:
                            if m.get("mountPropagation") != "HostToContainer":
                                err(f"{name} container {other['name']}", f"{vol} without HostToContainer")
                            if m["mountPath"] != shared[0]["mountPath"]:
                                err(f"{name} container {other['name']}", f"{vol} at another path")
                # Probes: startup on /readyz (main containers wait for it), liveness on /healthz,
                # both on the port --metrics-addr listens on.
                addr = flag(args, "--metrics-addr")
                if not addr or not addr.startswith("0.0.0.0:"):
                    err(where, "--metrics-addr must listen on 0.0.0.0 for the kubelet's probes")
                    continue
                port = int(addr.rsplit(":", 1)[1])
                named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                for probe, want in (("startupProbe", "/readyz"), ("livenessProbe", "/healthz")):
                    get = (c.get(probe) or {}).get("httpGet") or {}
                    p = named.get(get.get("port"), get.get("port"))
                    if get.get("path") != want or p != port:
                        err(where, f"{probe} must be httpGet {want} on port {port}")
                if c in spec.get("initContainers", []) and c.get("restartPolicy") != "Always":
                    err(where, "an init container running modelfs must be a native sidecar (restartPolicy: Always)")
                pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
                if pre[1:] != ["unmount", mountpoint]:
                    err(where, f"preStop must run `modelfs unmount {mountpoint}`")
                # The store: bounded below an emptyDir's sizeLimit, or the kubelet evicts the pod.
                store = flag(args, "--store")
                for m in c.get("volumeMounts", []):
                    if m["mountPath"] == store:
                        limit = (volumes[m["name"]].get("emptyDir") or {}).get("sizeLimit")
                        bound = flag(args, "--max-cache-size")
                        if limit and (not bound or quantity(bound) >= quantity(limit)):
                            err(where, f"--max-cache-size must be below the store's sizeLimit {limit}")
                        break
                else:
                    err(where, f"--store {store} is not on a volume")

# A consumer of the node's mount takes the parent directory, at the same path, rslave.
for where, hp, m in host_mounts:
    hp = hp.rstrip("/")
    for node_dir, path in node_dirs.items():
        if hp.startswith(node_dir + "/"):
            err(where, f"hostPath {hp} is inside {node_dir}: mount {node_dir} itself "
                       "(a bind of the FUSE mount goes dead when modelfs restarts)")
        elif hp == node_dir:
            if m.get("mountPropagation") != "HostToContainer":
                err(where, f"hostPath {hp} without mountPropagation: HostToContainer")
            if m["mountPath"] != path:
                err(where, f"hostPath {hp} mounted at {m['mountPath']}, not {path}")
# The CSI driver: one name everywhere, and the pods that use it run without privilege.
drivers, used = set(), []
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in (d for d in yaml.safe_load_all(f) if d):
            if doc["kind"] == "CSIDriver":
                drivers.add(doc["metadata"]["name"])
            if doc["kind"] == "PersistentVolume" and "csi" in doc["spec"]:
                used.append((f"{path} PersistentVolume/{doc['metadata']['name']}", doc["spec"]["csi"]["driver"]))
            for spec in pod_specs(doc):
                where = f"{path} {doc['kind']}/{doc['metadata']['name']}"
                csi_vols = [v for v in spec.get("volumes", []) if "csi" in v]
                for v in csi_vols:
                    used.append((where, v["csi"]["driver"]))
                    if not v["csi"].get("readOnly"):
                        err(where, f"csi volume {v['name']} must be readOnly")
                if csi_vols:
                    if any("hostPath" in v for v in spec.get("volumes", [])):
                        err(where, "a pod using the CSI driver needs no hostPath")
                    if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
                        err(where, "the CSI example pod must run as non-root")
                    for c in spec["containers"]:
                        sc = c.get("securityContext") or {}
                        if sc.get("privileged") or sc.get("allowPrivilegeEscalation", True):
                            err(f"{where} container {c['name']}", "must not be privileged nor escalate")
for where, d in used:
    if d not in drivers:
        err(where, f"driver {d} is not a CSIDriver in deploy/k8s ({sorted(drivers)})")
if drivers and not used:
    errors.append("a CSIDriver without an example volume")

if not node_dirs or not host_mounts:
    errors.append("expected a DaemonSet mounting below a hostPath and a consumer of it")

if seen_modelfs < 2:
    errors.append(f"expected modelfs in the sidecar pod and the DaemonSet, found {seen_modelfs}")
for e in errors:
    print(e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
say "manifests: privileges, propagation, probes, preStop, token and store rules hold"

# --- 3. command lines against the binary --------------------------------------------------
# The units' ExecStart= lines, with specifiers and variables given example values, once with
# $MODELFS_OPTS empty and once with each MODELFS_OPTS= example in systemd/.
$py - "$bin" "$tmp/k8s-argv.jsonl" "${units[@]}" systemd/modelfs.env.example <<'PY' || fail "command lines (above)"
import json, re, shlex, subprocess, sys

binary, k8s, units, env_example = sys.argv[1], sys.argv[2], sys.argv[3:5], sys.argv[5]
def examples(path):
    """MODELFS_OPTS= values shown in a file's comments or settings."""
    for line in open(path):
        m = re.match(r"^[#\s]*MODELFS_OPTS=(.*)$", line)
        if m:
            yield m.group(1).strip()

lines = []
for path in units:
    # A unit with no extra flags, with the environment example's, and with its own.
    opts = ["", *examples(env_example), *examples(path)]
    for line in open(path):
        if line.startswith("ExecStart="):
            cmd = line[len("ExecStart="):].strip()
            cmd = (cmd.replace("%C", "/var/cache").replace("%f", "/mnt/models")
                      .replace("%i", "mnt-models")
                      .replace("${MODELFS_METRICS_ADDR}", "127.0.0.1:9137"))
            for o in opts:
                argv = shlex.split(cmd.replace("$MODELFS_OPTS", o))
                lines.append((path, argv[1:]))
for line in open(k8s):
    lines.append(("deploy/k8s", json.loads(line)))
if len(lines) < 4:
    sys.exit(f"only {len(lines)} modelfs command lines found")
bad = 0
for where, args in lines:
    if any("$" in a or "%" in a for a in args):
        print(f"{where}: unexpanded variable in {args}", file=sys.stderr)
        bad += 1
        continue
    r = subprocess.run([binary, *args, "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{where}: `modelfs {' '.join(args)}` is rejected:\n{r.stderr}", file=sys.stderr)
        bad += 1
# Can fail: a flag the binary does not have must be rejected.
r = subprocess.run([binary, "mount", "/models", "--no-such-flag", "--help"], capture_output=True)
if r.returncode == 0:
    sys.exit("self-test: the binary accepted an unknown flag")
r = subprocess.run([binary, "unmount", "--help"], capture_output=True)
if r.returncode != 0:
    print("`modelfs unmount` (ExecStopPost=, preStop) is not a command", file=sys.stderr)
    bad += 1
if bad:
    sys.exit(1)
print(f"check_deploy: {len(lines)} modelfs command lines parsed by the binary")
PY

say "ok ($(( $(date +%s) - start )) s)"

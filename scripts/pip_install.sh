# Sourced by scripts/setup.sh and scripts/test_python.sh: `pip_install ARGS...` installs into
# the first python3 on PATH (the one the tests run). Debian's own python refuses system-wide
# pip installs unless told this is intended.
py=python3
pip_install() {
    if ! $py -m pip install -q "$@" 2>/tmp/modelfs-pip.log; then
        if grep -q externally-managed /tmp/modelfs-pip.log; then
            $py -m pip install -q --break-system-packages "$@"
        else
            cat /tmp/modelfs-pip.log >&2
            exit 1
        fi
    fi
}

# Shared by scripts/bench.sh and scripts/bench/cold_probe.sh: the origin (nginx as the CDN,
# with an optional per-connection cap, and the mock Hub redirecting LFS downloads to it).
# The caller sets W (work dir), DATA (its files/ and lfs/ live here), LOGS, MOCK (the mock_hub
# binary), the array PIDS (every process started is appended, for the caller's cleanup) and
# a function die.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_nginx NAME PORT LIMIT_RATE  (LIMIT_RATE 0 = uncapped; bytes/s per connection)
start_nginx() {
    local name=$1 port=$2 rate=$3 p="$W/nginx-$1"
    mkdir -p "$p/tmp"
    cat >"$p/nginx.conf" <<EOF
user root root;
worker_processes 2;
pid $p/nginx.pid;
error_log $p/error.log warn;
events { worker_connections 1024; }
http {
    default_type application/octet-stream;
    log_format bench '\$request_method \$uri \$status "\$http_range" \$body_bytes_sent';
    access_log $p/access.log bench;
    client_body_temp_path $p/tmp/body;
    proxy_temp_path $p/tmp/proxy;
    fastcgi_temp_path $p/tmp/fastcgi;
    uwsgi_temp_path $p/tmp/uwsgi;
    scgi_temp_path $p/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$port;
        # limit_rate is per connection (per request on it): what a CDN edge caps.
        location /files/ { alias $DATA/files/; autoindex on; limit_rate $rate; }
        location /lfs/ { alias $DATA/lfs/; limit_rate $rate; }
    }
}
EOF
    nginx -c "$p/nginx.conf" -p "$p" -e "$p/error.log" -g 'daemon off;' >"$LOGS/nginx-$name.out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/files/" && return 0
        sleep 0.1
    done
    cat "$p/error.log" >&2
    die "nginx $name did not start"
}

# start_hub NAME CDN_URL [MOCK_ARGS...] -> sets HUB_ENDPOINT (not printed: a $(...) subshell
# would lose the PID). An empty CDN_URL keeps the mock's own CDN (which MOCK_ARGS such as
# --cdn-first-byte-ms and --cdn-rate shape).
start_hub() {
    local name=$1 cdn=$2 out="$W/hub-$1.out"
    shift 2
    : >"$out"
    "$MOCK" --dir "$DATA/files" --port 0 ${cdn:+--cdn-url "$cdn"} "$@" >"$out" 2>"$LOGS/hub-$name.log" &
    PIDS+=($!)
    # Loading hashes the 1 GiB file (sha256 and git sha1): a few seconds.
    for _ in $(seq 1800); do
        grep -q '^endpoint ' "$out" && break
        sleep 0.1
    done
    grep -q '^endpoint ' "$out" || { cat "$LOGS/hub-$name.log" >&2; die "mock Hub $name did not start"; }
    HUB_ENDPOINT=$(awk '/^endpoint /{print $2}' "$out")
}

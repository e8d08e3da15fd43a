#!/usr/bin/env bash
# Resident memory per idle client connection: what each proxy keeps for a browser that made a request and keeps
# its connection open, as thousands of them do in front of a busy site (run.sh's memory columns are for its 32
# busy connections). For each target found installed (Portcullis, nginx, HAProxy) and each protocol, a fresh
# proxy in front of the same origin, then COUNT TLS connections that each make one request (ALPN http/1.1 or h2)
# and stay open; prints the growth of the proxy's resident memory over them, per connection, and its ratio to
# nginx's and HAProxy's.
#
# Usage: benches/load/idle_conns.sh
# Environment:
#   COUNT=2000                     idle connections per measurement
#   TARGETS="portcullis nginx haproxy"   PROTOS="h1 h2"
#   NO_BUILD=1                     use the existing release binary;  PORTCULLIS_BIN  binary to measure
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
COUNT="${COUNT:-2000}"
TARGETS="${TARGETS:-portcullis nginx haproxy}"
PROTOS="${PROTOS:-h1 h2}"

say() { printf '%s\n' "$*" >&2; }
die() { say "idle_conns: $*"; exit 1; }
want() { [[ " $1 " == *" $2 "* ]]; }
for tool in openssl python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y openssl python3 curl"
done
[[ "$(ulimit -n)" -gt $((COUNT + 100)) ]] || ulimit -n $((COUNT + 1000)) 2>/dev/null ||
    die "COUNT=$COUNT needs more open files than 'ulimit -n' allows ($(ulimit -n))"
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
portcullis_bin
scratch portcullis-idle-conns

bench_certs "$TMP"

ORIGIN_PORT="$(free_port)"
RUST_LOG=warn "$PORTCULLIS_BIN" echo --listen "127.0.0.1:$ORIGIN_PORT" >"$TMP/origin.log" 2>&1 &
STARTED+=("$!")
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ORIGIN_PORT/small" >/dev/null 2>&1 && break
    sleep 0.1
done

# The process and its descendants, comma-separated (nginx's master and worker).
tree() {
    local pid="$1" child
    printf '%s,' "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        tree "$child"
    done
}

answers() {
    local port="$1" i
    for i in $(seq 100); do
        curl -sf --cacert "$TMP/ca.crt" --resolve "app.bench.test:$port:127.0.0.1" \
            "https://app.bench.test:$port/small" -o /dev/null 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

RESULTS="$TMP/results.tsv"
: >"$RESULTS"

# measure TARGET PROTO PORT CMD...: starts CMD, opens the idle connections, stops it.
measure() {
    local target="$1" proto="$2" port="$3" pid out
    shift 3
    "$@" >"$TMP/$target.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    answers "$port" || die "$target did not start: $(tail -5 "$TMP/$target.log")"
    sleep 0.5
    out="$(python3 "$HERE/idle_conns.py" "$port" app.bench.test "$proto" "$COUNT" "$(tree "$pid")")" ||
        die "$target $proto: the idle connections failed"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    printf '%s\t%s\t%s\n' "$target" "$proto" "$out" | sed 's/ /\t/g' >>"$RESULTS"
    say "  $target $proto: $(awk '{printf "%.1f -> %.1f MiB, %d bytes per idle connection", $1 / 1024, $2 / 1024, $3}' <<<"$out")"
}

for proto in $PROTOS; do
    if want "$TARGETS" portcullis; then
        PORT="$(free_port)"
        cat >"$TMP/portcullis.toml" <<EOT
domain = "bench.test"
[server]
https = "127.0.0.1:$PORT"
watch = false
shutdown_grace_secs = 1
[tls]
certs_dir = "$TMP/pc-certs"
[services.app]
upstream = "http://127.0.0.1:$ORIGIN_PORT"
hosts = ["app.bench.test"]
bypass_auth = true
EOT
        measure portcullis "$proto" "$PORT" env RUST_LOG=warn "$PORTCULLIS_BIN" run --config "$TMP/portcullis.toml"
    fi
    if want "$TARGETS" nginx; then
        if ! command -v nginx >/dev/null; then
            say "nginx: not installed (apt-get install -y nginx)"
        else
            NG="$TMP/nginx"
            mkdir -p "$NG"
            PORT="$(free_port)"
            # run.sh's settings.
            cat >"$NG/nginx.conf" <<EOT
worker_processes 1;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections $((COUNT + 100)); }
http {
    access_log off;
    client_body_temp_path $NG/body;
    proxy_temp_path $NG/proxy;
    fastcgi_temp_path $NG/fastcgi;
    uwsgi_temp_path $NG/uwsgi;
    scgi_temp_path $NG/scgi;
    keepalive_timeout 120s;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PORT ssl http2;
        server_name app.bench.test;
        ssl_certificate $TMP/pc-certs/bench.crt;
        ssl_certificate_key $TMP/bench.key;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / {
            proxy_pass http://origin;
        }
    }
}
EOT
            measure nginx "$proto" "$PORT" nginx -c "$NG/nginx.conf" -e "$NG/error.log" -g 'daemon off;'
        fi
    fi
    if want "$TARGETS" haproxy; then
        if ! command -v haproxy >/dev/null; then
            say "haproxy: not installed (apt-get install -y haproxy)"
        else
            PORT="$(free_port)"
            cat >"$TMP/haproxy.cfg" <<EOT
global
    nbthread 1
    maxconn $((COUNT + 100))
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 60s
    timeout http-keep-alive 120s
    option http-keep-alive
    http-reuse always
frontend https
    bind 127.0.0.1:$PORT ssl crt $TMP/combined.pem alpn h2,http/1.1
    default_backend origin
backend origin
    server o 127.0.0.1:$ORIGIN_PORT
EOT
            measure haproxy "$proto" "$PORT" haproxy -db -f "$TMP/haproxy.cfg"
        fi
    fi
done

echo
python3 - "$RESULTS" "$COUNT" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
per = {(r[0], r[1]): float(r[4]) for r in rows}
print(f"{sys.argv[2]} idle TLS connections, one request each")
print(f"{'target':<11} {'proto':<5} {'RSS before':>10} {'after':>8} {'per connection':>14} {'x nginx':>8} {'x haproxy':>9}")
for t, p, before, after, b in rows:
    ratio = lambda peer: f"{float(b) / per[(peer, p)]:.2f}" if per.get((peer, p)) else "-"
    print(f"{t:<11} {p:<5} {int(before) / 1024:>7.1f} MiB {int(after) / 1024:>5.1f} MiB {float(b):>8.0f} bytes"
          f" {ratio('nginx'):>8} {ratio('haproxy'):>9}")
PY

#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the deterministic companion of run.sh. Wall-clock
# req/s on this shared 2-core machine drifts by up to 40% between runs of one binary; an instruction count of the
# same binary under the same load repeats to within a fraction of a percent, whatever else the machine does. It
# counts user space only (the kernel's TCP work, about half of a proxy's CPU here, is not in it), so it compares
# the proxies' own code, not their throughput.
#
# For each target (Portcullis, and nginx when installed) and protocol, the proxy runs under callgrind with
# instrumentation off; WARM requests warm it up (connections, pools, caches), then a load of REQUESTS and one of
# 2*REQUESTS are counted, and their difference is the cost of REQUESTS requests on open connections.
# Prints one line per measurement: target, scenario, protocol, instructions per request, and the ratio to nginx.
#
# Usage: benches/load/instructions.sh
# Environment:
#   REQUESTS=6000 WARM=2000 CONNECTIONS=32
#   TARGETS="portcullis nginx"   SCENARIOS="small jwt-hs256"   PROTOS="h1 h2"
#                                (also "64k": the bypass route with a 64 KiB body; "session": a protected route
#                                with a session cookie, after a real sign-in through the test OpenID provider,
#                                which needs node and `npm ci --prefix tests/idp`)
#   READ_KIB=N                   services.app.upstream_read_buffer_kib for Portcullis (default: the built-in 32)
#   RESPONSE_REQUEST_ID=errors   server.response_request_id for Portcullis (default: always)
#   NO_BUILD=1                   use the existing release binary;  PORTCULLIS_BIN  binary to measure
#   CALLGRIND_OUT=DIR            keep the callgrind profiles there (callgrind_annotate reads them)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REQUESTS="${REQUESTS:-6000}"
WARM="${WARM:-2000}"
CONNECTIONS="${CONNECTIONS:-32}"
TARGETS="${TARGETS:-portcullis nginx}"
SCENARIOS="${SCENARIOS:-small jwt-hs256}"
PROTOS="${PROTOS:-h1 h2}"

say() { printf '%s\n' "$*" >&2; }
die() { say "instructions: $*"; exit 1; }
want() { [[ " $1 " == *" $2 "* ]]; }

for tool in valgrind callgrind_control h2load openssl python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y valgrind nghttp2-client openssl python3 curl"
done

# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
portcullis_bin
scratch portcullis-instr
OUTDIR="${CALLGRIND_OUT:-$TMP}"
mkdir -p "$OUTDIR"

# A throw-away CA and a certificate for *.bench.test.
bench_certs "$TMP"

ORIGIN_PORT="$(free_port)"
taskset -c 0 env RUST_LOG=warn "$PORTCULLIS_BIN" echo --listen "127.0.0.1:$ORIGIN_PORT" >"$TMP/origin.log" 2>&1 &
STARTED+=("$!")
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ORIGIN_PORT/small" >/dev/null 2>&1 && break
    sleep 0.1
done

# An HS256 token for the protected service (no JWKS server needed: the cache-hit path is the same code).
SECRET="instructions-bench-secret-of-32-bytes-or-more"
printf '%s' "$SECRET" >"$TMP/hmac-secret"
TOKEN="$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
p = b(json.dumps({"iss": "instr-hmac", "aud": "portcullis-instr", "sub": "bench", "iat": now,
                  "exp": now + 86400}).encode())
sig = b(hmac.new(sys.argv[1].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{sig}")
PY
)"

# The session scenario signs in for real, as run.sh does: the test OpenID provider (tests/idp) on loopback, a
# browser-like sign-in with curl through Portcullis, then the session cookie it got on every counted request.
# shellcheck source=benches/load/idp.sh
source "$HERE/idp.sh"
IDP_ISSUER=""
SIGNIN_PORT=""
if want "$SCENARIOS" session && want "$TARGETS" portcullis; then
    SIGNIN_PORT="$(free_port)"
    idp_start 0 portcullis-instr instr-client-secret "$SIGNIN_PORT"
    [[ -n "$IDP_ISSUER" ]] || die "session: $IDP_SKIP"
fi

# start_under_callgrind NAME CMD...: the proxy on core 1, instrumentation off until the counted phase.
start_under_callgrind() {
    local name="$1"
    shift
    RUST_LOG=warn taskset -c 1 valgrind --tool=callgrind --instr-atstart=no --trace-children=no \
        --callgrind-out-file="$OUTDIR/callgrind.$name.%p" "$@" >"$TMP/$name.log" 2>&1 &
    PID=$!
    STARTED+=("$PID")
}

answers() {
    local port="$1" host="$2" i
    for i in $(seq 300); do
        curl -sf --cacert "$TMP/ca.crt" --resolve "$host:$port:127.0.0.1" "https://$host:$port/small" \
            -o /dev/null 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

RESULTS="$TMP/results.tsv"
: >"$RESULTS"

# counted NAME PID TAG N LOAD...: instructions the proxy spends while LOAD sends N requests; all must answer 2xx.
counted() {
    local name="$1" pid="$2" tag="$3" n="$4" out file ok
    shift 4
    callgrind_control -z "$pid" >/dev/null 2>&1 || true
    callgrind_control -i on "$pid" >/dev/null
    out="$("$@" -n"$n" 2>&1)" || true
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$tag" "$pid" >/dev/null
    # Each dump is a new numbered file; keep it under the measurement's name.
    file="$(ls -t "$OUTDIR/callgrind.$name.$pid".* 2>/dev/null | head -1)"
    [[ -n "$file" ]] || die "$name: callgrind wrote no profile"
    mv "$file" "$OUTDIR/$tag.callgrind"
    ok="$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")"
    if [[ "${ok:-0}" -ne "$n" ]]; then
        say "$tag: only ${ok:-0} of $n requests answered 2xx: $(tail -3 <<<"$out" | tr '\n' ' ')"
        return 1
    fi
    sed -n 's/^summary: *\([0-9]*\).*/\1/p; s/^totals: *\([0-9]*\).*/\1/p' "$OUTDIR/$tag.callgrind" | tail -1
}

# count NAME PID PORT HOST PROTO SCENARIO [HEADER]
# Counts a load of REQUESTS and one of 2*REQUESTS, each on CONNECTIONS new connections: their difference is the
# cost of REQUESTS requests without the TLS handshakes (which a keep-alive client pays once per connection).
count() {
    local name="$1" pid="$2" port="$3" host="$4" proto="$5" scenario="$6" header="${7:-}"
    local h2=() hdr=() one two path=/small
    [[ "$proto" == h1 ]] && h2=(--h1)
    [[ "$scenario" == 64k ]] && path=/bytes/65536
    [[ -n "$header" ]] && hdr=(-H "$header")
    local load=(taskset -c 0 h2load "${h2[@]}" -c"$CONNECTIONS" -m1 --connect-to="127.0.0.1:$port" "${hdr[@]}"
        "https://$host:$port$path")
    "${load[@]}" -n"$WARM" >/dev/null 2>&1 || true
    one="$(counted "$name" "$pid" "$name-$scenario-$proto-1x" "$REQUESTS" "${load[@]}")" || return 0
    two="$(counted "$name" "$pid" "$name-$scenario-$proto-2x" "$((2 * REQUESTS))" "${load[@]}")" || return 0
    printf '%s\t%s\t%s\t%s\n' "$name" "$scenario" "$proto" "$(((two - one) / REQUESTS))" >>"$RESULTS"
    say "  $name $scenario $proto: $(((two - one) / REQUESTS)) instructions per request"
}

if want "$TARGETS" portcullis; then
    PORT="${SIGNIN_PORT:-$(free_port)}"
    cat >"$TMP/portcullis.toml" <<EOF
domain = "bench.test"
[server]
https = "127.0.0.1:$PORT"
watch = false
shutdown_grace_secs = 1
${RESPONSE_REQUEST_ID:+response_request_id = \"$RESPONSE_REQUEST_ID\"}
[tls]
certs_dir = "$TMP/pc-certs"
[[auth.issuers]]
name = "hmac"
issuer = "instr-hmac"
secret_file = "$TMP/hmac-secret"
audiences = ["portcullis-instr"]
algorithms = ["HS256"]
[services.app]
upstream = "http://127.0.0.1:$ORIGIN_PORT"
hosts = ["app.bench.test"]
bypass_auth = true
${READ_KIB:+upstream_read_buffer_kib = $READ_KIB}
[services.api]
upstream = "http://127.0.0.1:$ORIGIN_PORT"
hosts = ["api.bench.test"]
issuers = ["hmac"]
EOF
    if [[ -n "$IDP_ISSUER" ]]; then
        idp_portcullis_config "$ORIGIN_PORT" >>"$TMP/portcullis.toml"
    fi
    say "portcullis ($PORTCULLIS_BIN) under callgrind"
    start_under_callgrind portcullis "$PORTCULLIS_BIN" run --config "$TMP/portcullis.toml"
    answers "$PORT" app.bench.test || die "portcullis did not start: $(tail -5 "$TMP/portcullis.log")"
    for proto in $PROTOS; do
        want "$SCENARIOS" small && count portcullis "$PID" "$PORT" app.bench.test "$proto" small
        want "$SCENARIOS" 64k && count portcullis "$PID" "$PORT" app.bench.test "$proto" 64k
        want "$SCENARIOS" jwt-hs256 &&
            count portcullis "$PID" "$PORT" api.bench.test "$proto" jwt-hs256 "Authorization: Bearer $TOKEN"
        if want "$SCENARIOS" session; then
            if [[ -z "${COOKIE:-}" ]]; then
                COOKIE="$(idp_sign_in "$PORT" "$TMP/cookies" "$TMP/ca.crt")" || COOKIE=""
                [[ -n "$COOKIE" ]] || die "session: the sign-in failed (provider log: $(tail -3 "$TMP/idp.log"))"
            fi
            count portcullis "$PID" "$PORT" web.bench.test "$proto" session "Cookie: _portcullis=$COOKIE"
        fi
    done
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
fi

if want "$TARGETS" nginx; then
    if ! command -v nginx >/dev/null; then
        say "nginx: not installed (apt-get install -y nginx); no ratio"
    else
        NG="$TMP/nginx"
        mkdir -p "$NG"
        PORT="$(free_port)"
        # The settings of run.sh's nginx, in one process (master_process off) so callgrind sees the worker.
        cat >"$NG/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NG/body;
    proxy_temp_path $NG/proxy;
    fastcgi_temp_path $NG/fastcgi;
    uwsgi_temp_path $NG/uwsgi;
    scgi_temp_path $NG/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$PORT ssl http2;
        server_name app.bench.test;
        ssl_certificate $TMP/pc-certs/bench.crt;
        ssl_certificate_key $TMP/bench.key;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host \$host;
        proxy_set_header X-Forwarded-For \$remote_addr;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-Host \$host;
        proxy_set_header X-Real-IP \$remote_addr;
        proxy_set_header X-Request-Id \$request_id;
        location / { proxy_pass http://origin; }
    }
}
EOF
        say "nginx under callgrind"
        start_under_callgrind nginx nginx -c "$NG/nginx.conf" -e "$NG/error.log"
        answers "$PORT" app.bench.test || die "nginx did not start: $(tail -5 "$NG/error.log" "$TMP/nginx.log")"
        for proto in $PROTOS; do
            want "$SCENARIOS" small && count nginx "$PID" "$PORT" app.bench.test "$proto" small
            want "$SCENARIOS" 64k && count nginx "$PID" "$PORT" app.bench.test "$proto" 64k
        done
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
fi

say ""
python3 - "$RESULTS" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
# nginx's count for the same protocol, and for the same scenario where nginx has one (it has no Bearer check)
nginx = {(r[1], r[2]): int(r[3]) for r in rows if r[0] == "nginx"}
print("%-12s %-10s %-5s %14s %10s" % ("target", "scenario", "proto", "instr/request", "vs nginx"))
for name, scenario, proto, ir in rows:
    peer = nginx.get((scenario, proto)) or (nginx.get(("small", proto)) if scenario.startswith("jwt") else None)
    ratio = "%.2fx" % (int(ir) / peer) if peer else "-"
    print("%-12s %-10s %-5s %14s %10s" % (name, scenario, proto, ir, ratio))
PY

#!/usr/bin/env bash
# The side-by-side load benchmark (issue 6): Portcullis and the peer proxies found installed (nginx, HAProxy,
# Caddy) as TLS-terminating reverse proxies in front of the same origin (`portcullis echo`), each pinned to one
# core and driven from the other core with wrk (HTTP/1.1) and h2load (HTTP/2), 32 keep-alive connections.
# Prints a table and writes benches/load/results/latest.json. Only ratios within one run mean anything.
#
# Usage: benches/load/run.sh            (from anywhere; builds the release binary first)
# Environment:
#   DURATION=10        seconds per measurement (plus a WARMUP-second run before each, not measured)
#   WARMUP=2
#   CONNECTIONS=32
#   TARGETS="origin portcullis nginx nginx+auth_request haproxy caddy"   subset to run
#   SCENARIOS="small 64k paced jwt-hit jwt-miss forward-auth session"    subset to run
#   PACED_RPS=20000    the rate of the "paced" scenario (bypass route, h2load at a fixed rate for both protocols,
#                      below every proxy's capacity here but Caddy's: latency without the load core's queue)
#   ALGS="rs256 es256 hs256"                                             JWT variants
#   MISS_TOKENS=40000  distinct tokens per algorithm for the cache-miss scenarios
#   PROXY_CPU=1 LOAD_CPU=0   cores for the proxy and for the load generator and origin
#   PROXY_QUOTA=N      run each proxy in a CPU cgroup capped at N% of its core (root; cgroup v1 `cpu`, or v2 with
#                      the cpu controller at the root). On 2 cores the load core saturates before any proxy's core
#                      does, so uncapped req/s compares the load side; capped well below that (50-60), each proxy's
#                      req/s is bounded by its own CPU per request, the same cap for all
#   NO_BUILD=1         use the existing release binary
#   PORTCULLIS_BIN     binary to measure (default: the release build)
#   PORTCULLIS_BASE_BIN   another binary, measured as "portcullis-base" before (and "portcullis-base2" after, if
#                      listed in TARGETS) "portcullis" in the same run, for before/after comparisons
#   ROUNDS=1           repeat all targets this many times, in turn; the report takes each median
#   OUT=benches/load/results/latest.json
#   PERF_DATA=/tmp/perf.data   also `perf record -g` Portcullis during its measured run of PERF_RUN
#   PERF_RUN="small h1"        (scenario and protocol)
#   PERF_TARGET=portcullis     the target to record instead (nginx, haproxy...: its whole process tree)
#   PERF_STAT=1        with PERF_DATA: write `perf stat` counts (syscalls, context switches, page faults, task
#                      clock) to PERF_DATA instead of recording a profile
#   READ_KIB=N         services.app.upstream_read_buffer_kib for the "portcullis" target only (the bypass service),
#                      so one run compares it with portcullis-base on the default
#   RESPONSE_REQUEST_ID=errors   server.response_request_id for the "portcullis" target only, the same way
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
TARGETS="${TARGETS:-origin portcullis-base portcullis nginx nginx+auth_request haproxy caddy}"
SCENARIOS="${SCENARIOS:-small 64k paced jwt-hit jwt-miss forward-auth session}"
PACED_RPS="${PACED_RPS:-20000}"
ALGS="${ALGS:-rs256 es256 hs256}"
MISS_TOKENS="${MISS_TOKENS:-40000}"
PROXY_CPU="${PROXY_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
OUT="${OUT:-$HERE/results/latest.json}"
ROUNDS="${ROUNDS:-1}"
PROXY_QUOTA="${PROXY_QUOTA:-}"

say() { printf '%s\n' "$*" >&2; }
die() { say "load: $*"; exit 1; }
want() { [[ " $1 " == *" $2 "* ]]; }

for tool in wrk h2load openssl python3 taskset curl; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y wrk nghttp2-client openssl python3 util-linux curl"
done
python3 -c 'import cryptography' 2>/dev/null ||
    die "python3 cryptography is missing: apt-get install -y python3-cryptography (or pip install cryptography)"

# ------------------------------------------------------------------------------------------------- build, temp

if [[ -z "${PORTCULLIS_BIN:-}" ]]; then
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    if [[ -z "${NO_BUILD:-}" ]]; then
        say "building: cargo build --release"
        (cd "$ROOT" && cargo build --release --quiet) || die "release build failed"
    fi
    PORTCULLIS_BIN="$TARGET_DIR/release/portcullis"
fi
[[ -x "$PORTCULLIS_BIN" ]] || die "no binary at $PORTCULLIS_BIN"
# A binary just written sits in the page cache in large folios, and a process maps them whole: a fresh build
# shows ~1.6 MiB more resident text than an older copy of the same code. Dropping the binaries' cached pages first
# makes every one fault its text in the same way, so RSS compares the binaries, not their age.
python3 - "$PORTCULLIS_BIN" ${PORTCULLIS_BASE_BIN:+"$PORTCULLIS_BASE_BIN"} <<'PY' || true
import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)  # dirty pages (a build that just finished) are not dropped
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY

TMP="$(mktemp -d /tmp/portcullis-load.XXXXXX)"
STARTED=()
QUOTA_DIR=""
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    # Empty once its processes are gone (a worker may take a moment after its master).
    if [[ -n "$QUOTA_DIR" ]]; then
        for _ in $(seq 50); do rmdir "$QUOTA_DIR" 2>/dev/null && break; sleep 0.1; done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The CPU cgroup for PROXY_QUOTA: a 20 ms period (short, so a capped proxy stalls in small steps, not 100 ms ones).
if [[ -n "$PROXY_QUOTA" ]]; then
    [[ "$PROXY_QUOTA" =~ ^[0-9]+$ && "$PROXY_QUOTA" -ge 10 && "$PROXY_QUOTA" -le 100 ]] ||
        die "PROXY_QUOTA=$PROXY_QUOTA: give a whole percent of one core, 10 to 100"
    [[ "$PROXY_CPU" != "$LOAD_CPU" ]] || die "PROXY_QUOTA: PROXY_CPU and LOAD_CPU are the same core; the origin would be capped too"
    period=20000
    quota=$((period * PROXY_QUOTA / 100))
    if [[ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        QUOTA_DIR="/sys/fs/cgroup/cpu/portcullis-load.$$"
        mkdir "$QUOTA_DIR" 2>/dev/null || die "PROXY_QUOTA: cannot make $QUOTA_DIR (run as root)"
        echo "$period" >"$QUOTA_DIR/cpu.cfs_period_us"
        echo "$quota" >"$QUOTA_DIR/cpu.cfs_quota_us"
    elif grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
        QUOTA_DIR="/sys/fs/cgroup/portcullis-load.$$"
        mkdir "$QUOTA_DIR" 2>/dev/null || die "PROXY_QUOTA: cannot make $QUOTA_DIR (run as root)"
        echo "$quota $period" >"$QUOTA_DIR/cpu.max"
    else
        die "PROXY_QUOTA needs a CPU cgroup: neither /sys/fs/cgroup/cpu (v1) nor the cpu controller in /sys/fs/cgroup/cgroup.subtree_control (v2) is here"
    fi
    say "proxies capped at $PROXY_QUOTA% of core $PROXY_CPU ($QUOTA_DIR)"
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts "$@" in the background pinned to a core, remembers its pid in $LAST_PID. With PROXY_QUOTA, what starts on
# the proxy core first joins the capped cgroup, so the processes it forks (nginx's worker) are in it too.
start() {
    local cpu="$1" log="$2"
    shift 2
    if [[ -n "$QUOTA_DIR" && "$cpu" == "$PROXY_CPU" ]]; then
        sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$QUOTA_DIR" taskset -c "$cpu" "$@" >"$log" 2>&1 &
    else
        taskset -c "$cpu" "$@" >"$log" 2>&1 &
    fi
    LAST_PID=$!
    STARTED+=("$LAST_PID")
}

stop() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------------------------------------ certificates

CERTS="$TMP/certs"
mkdir -p "$CERTS"
(
    cd "$CERTS"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench test CA" \
        -keyout ca.key -out ca.crt -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench.test" \
        -keyout bench.key -out bench.csr 2>/dev/null
    printf 'subjectAltName=DNS:bench.test,DNS:*.bench.test,DNS:localhost,IP:127.0.0.1\n' >ext.cnf
    openssl x509 -req -in bench.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out bench.crt 2>/dev/null
    cat bench.crt ca.crt >chain.crt
    cat chain.crt bench.key >combined.pem
    rm -f bench.csr ext.cnf ca.srl
) || die "openssl could not make the test certificates"
mkdir -p "$TMP/portcullis-certs"
cp "$CERTS/chain.crt" "$TMP/portcullis-certs/bench.crt"
cp "$CERTS/bench.key" "$TMP/portcullis-certs/bench.key"

# ------------------------------------------------------------------------------------------------------ origin

ORIGIN_PORT="$(free_port)"
start "$LOAD_CPU" "$TMP/origin.log" env RUST_LOG=warn "$PORTCULLIS_BIN" echo --listen "127.0.0.1:$ORIGIN_PORT"
ORIGIN_PID=$LAST_PID
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ORIGIN_PORT/small" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$ORIGIN_PORT/small" >/dev/null || die "origin did not start: $(cat "$TMP/origin.log")"

# ---------------------------------------------------------------------------------------------- tokens, JWKS

ISS_JWKS="https://idp.bench.test"
ISS_HMAC="bench-hmac"
AUD="portcullis-bench"
TOK="$TMP/tokens"
mkdir -p "$TOK"
if want "$SCENARIOS" jwt-hit || want "$SCENARIOS" jwt-miss; then
    say "making keys and $MISS_TOKENS tokens per algorithm"
    python3 "$HERE/tokens.py" "$TOK" "$ISS_JWKS" "$ISS_HMAC" "$AUD" "$MISS_TOKENS" || die "token generation failed"
else
    python3 "$HERE/tokens.py" "$TOK" "$ISS_JWKS" "$ISS_HMAC" "$AUD" 1 || die "token generation failed"
fi
JWKS_PORT="$(free_port)"
start "$LOAD_CPU" "$TMP/jwks.log" python3 -m http.server --bind 127.0.0.1 --directory "$TOK" "$JWKS_PORT"
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$JWKS_PORT/jwks.json" >/dev/null 2>&1 && break
    sleep 0.1
done

# ------------------------------------------------------------------------------------------- OpenID provider

# The session scenario signs in for real: the test OpenID provider (tests/idp, the certified oidc-provider package)
# on loopback, a browser-like sign-in with curl, then the session cookie it got on every request.
# shellcheck source=benches/load/idp.sh
source "$HERE/idp.sh"
IDP_ISSUER=""
IDP_SKIP=""
SIGNIN_PORTS=()
if want "$SCENARIOS" session; then
    # One free port per Portcullis run, chosen now: the provider registers their exact callback URLs.
    for _ in 1 2 3; do SIGNIN_PORTS+=("$(free_port)"); done
    idp_start "$LOAD_CPU" portcullis-bench bench-client-secret "${SIGNIN_PORTS[@]}"
fi

# ------------------------------------------------------------------------------------------------ measurement

RESULTS="$TMP/results.tsv"
NOTES="$TMP/notes.txt"
: >"$RESULTS"
: >"$NOTES"
note() {
    local text
    text="$(tr '\n' ' ' <<<"$*" | sed 's/  */ /g; s/ $//')"
    say "note: $text"
    printf '%s\n' "$text" >>"$NOTES"
}

# "busy total softirq" jiffies of one core, from /proc/stat.
core_jiffies() {
    awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t, $8}' /proc/stat
}

# Busy share (percent) of a core between two core_jiffies readings.
busy_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); d = y[2] - x[2];
        printf "%d", (d > 0 ? 100 * (y[1] - x[1]) / d : 0)}'
}
CLK_TCK="$(getconf CLK_TCK)"

# The process and its descendants.
tree() {
    local pid="$1" child
    echo "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        tree "$child"
    done
}

# "TOTAL USER": CPU ticks of the tree, utime+stime and utime alone, from one read of each /proc/PID/stat.
cpu_ticks() {
    local total=0 user=0 p t u
    for p in $(tree "$1"); do
        read -r t u < <(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null | awk '{print $12 + $13, $12}') || true
        total=$((total + ${t:-0}))
        user=$((user + ${u:-0}))
    done
    echo "$total $user"
}

# "RSS_KiB PSS_KiB" of the tree.
memory() {
    local rss=0 pss=0 p r s
    for p in $(tree "$1"); do
        r=$(awk '/^Rss:/ {print $2}' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
        s=$(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
        rss=$((rss + ${r:-0}))
        pss=$((pss + ${s:-0}))
    done
    echo "$rss $pss"
}

# measure TARGET SCENARIO PROTO PID URL [HEADER] [TOKENS_FILE] [METRICS_URL]
# Runs a warm-up, then the measured run; samples memory half-way; appends a line to $RESULTS. With METRICS_URL
# (Portcullis's admin /metrics), the line also records the tokens its verified-token cache holds after the run.
measure() {
    local target="$1" scenario="$2" proto="$3" pid="$4" url="$5" header="${6:-}" tokens="${7:-}" metrics="${8:-}"
    local host authority path scheme port hdr=() out idle load t0 t1 u0 u1 o0 o1 reqs dur p50 p99 errors
    scheme="${url%%://*}"
    authority="${url#*://}"
    authority="${authority%%/*}"
    host="${authority%%:*}"
    port="${authority##*:}"
    path="/${url#*://*/}"
    # Several headers: one per line.
    local h
    while IFS= read -r h; do
        [[ -n "$h" ]] && hdr+=(-H "$h")
    done <<<"$header"
    idle="$(memory "$pid")"
    local h2log="$TMP/h2load.log" tool=wrk paced=()
    # wrk cannot hold a rate: the paced scenario uses h2load over HTTP/1.1 too, each connection at its share.
    [[ "$proto" == h2 || "$scenario" == paced ]] && tool=h2load
    [[ "$scenario" == paced ]] && paced=(--rps="$((PACED_RPS / CONNECTIONS))")
    [[ "$scenario" == paced && "$proto" == h1 ]] && paced+=(--h1)
    # Runs the load generator, then prints its CPU ticks (this subshell's reaped children) as LOADGEN_TICKS.
    run_one() {
        local secs="$1"
        if [[ "$tool" == wrk ]]; then
            # wrk connects to the URL's address: 127.0.0.1, with the service's name in Host.
            TOKENS_FILE="$tokens" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency \
                -s "$HERE/report.lua" -H "Host: $host" "${hdr[@]}" "$scheme://127.0.0.1:$port$path"
        else
            rm -f "$h2log"
            taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNECTIONS" -m1 -D"$secs" --connect-to="127.0.0.1:$port" \
                "${paced[@]}" --log-file="$h2log" "${hdr[@]}" "$url"
        fi
        local me=$BASHPID
        echo "LOADGEN_TICKS=$(sed 's/^.*) //' "/proc/$me/stat" | awk '{print $14 + $15}')"
    }
    (run_one "$WARMUP" >/dev/null 2>&1) || true
    read -r t0 u0 <<<"$(cpu_ticks "$pid")"
    o0=0
    [[ "$pid" != "$ORIGIN_PID" ]] && read -r o0 _ <<<"$(cpu_ticks "$ORIGIN_PID")"
    local pc0 lc0 pc1 lc1
    pc0="$(core_jiffies "$PROXY_CPU")"
    lc0="$(core_jiffies "$LOAD_CPU")"
    (sleep "$(awk -v d="$DURATION" 'BEGIN {print d / 2}')"; memory "$pid" >"$TMP/load-mem") &
    local sampler=$! perf_pid=""
    if [[ -n "${PERF_DATA:-}" && "$target" == "${PERF_TARGET:-portcullis}" && "$scenario $proto" == "${PERF_RUN:-small h1}" ]]; then
        local pids
        pids="$(tree "$pid" | paste -sd, -)"
        if [[ -n "${PERF_STAT:-}" ]]; then
            perf stat -e raw_syscalls:sys_enter,context-switches,page-faults,task-clock -p "$pids" -o "$PERF_DATA" -- sleep "$DURATION" >"$TMP/perf.log" 2>&1 &
        else
            perf record -F 999 -g -p "$pids" -o "$PERF_DATA" -- sleep "$DURATION" >"$TMP/perf.log" 2>&1 &
        fi
        perf_pid=$!
    fi
    out="$(run_one "$DURATION" 2>&1)" || true
    read -r t1 u1 <<<"$(cpu_ticks "$pid")"
    o1=0
    [[ "$pid" != "$ORIGIN_PID" ]] && read -r o1 _ <<<"$(cpu_ticks "$ORIGIN_PID")"
    pc1="$(core_jiffies "$PROXY_CPU")"
    lc1="$(core_jiffies "$LOAD_CPU")"
    wait "$sampler" 2>/dev/null || true
    if [[ -n "$perf_pid" ]]; then
        wait "$perf_pid" 2>/dev/null || note "perf record failed: $(cat "$TMP/perf.log")"
    fi
    load="$(cat "$TMP/load-mem" 2>/dev/null || echo '0 0')"
    local cached=""
    if [[ -n "$metrics" ]]; then
        cached="$(curl -sf "$metrics" | awk '$1 == "portcullis_token_cache_entries" {print $2}' || true)"
    fi
    if [[ "$tool" == h2load && -s "$h2log" ]]; then
        out="$out
$(python3 - "$h2log" <<'PY'
import sys
lat = []
bad = 0
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) < 3:
        continue
    lat.append(int(parts[2]))
    if not 200 <= int(parts[1]) < 400:
        bad += 1
lat.sort()
pct = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] if lat else 0
print("H2_RESULT requests=%d p50_us=%d p99_us=%d errors_status=%d" % (len(lat), pct(0.50), pct(0.99), bad))
PY
)"
    fi
    local line
    line="$(grep -E '^(WRK|H2)_RESULT' <<<"$out" | tail -1 || true)"
    if [[ -z "$line" ]]; then
        note "$target $scenario $proto: the load generator reported nothing: $(tail -3 <<<"$out" | tr '\n' ' ')"
        return 0
    fi
    kv() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$line"; }
    reqs="$(kv requests)"
    p50="$(kv p50_us)"
    p99="$(kv p99_us)"
    if [[ "$tool" == wrk ]]; then
        dur="$(kv duration_us)"
        errors=$(($(kv errors_connect) + $(kv errors_read) + $(kv errors_write) + $(kv errors_status) + $(kv errors_timeout)))
    else
        # h2load's own elapsed time ("finished in 10.00s").
        dur="$(sed -n 's/^finished in \([0-9.]*\)s.*/\1/p' <<<"$out" | awk '{printf "%d", $1 * 1000000}')"
        errors="$(kv errors_status)"
        local failed
        failed="$(sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p' <<<"$out")"
        errors=$((errors + ${failed:-0}))
    fi
    if [[ "${errors:-0}" -gt 0 ]]; then
        note "$target $scenario $proto: $errors of $reqs requests failed or got a non-2xx/3xx status"
    fi
    # CPU on the two cores not spent by the proxy, the origin or the load generator (another user's build):
    # percent of one core. Above 10 the run was disturbed and should be repeated. Under PROXY_QUOTA the capped
    # core idles between periods, and the packets that reach it then are processed in softirq charged to no
    # process (10-30% of a core here): that is left out, since it is these processes' own traffic.
    local gen other
    gen="$(sed -n 's/^LOADGEN_TICKS=//p' <<<"$out" | tail -1)"
    other="$(awk -v a0="$pc0" -v a1="$pc1" -v b0="$lc0" -v b1="$lc1" -v own=$((t1 - t0 + o1 - o0 + ${gen:-0})) \
        -v capped="${QUOTA_DIR:+1}" \
        'BEGIN {split(a0, x, " "); split(a1, y, " "); split(b0, u, " "); split(b1, v, " ");
            busy = (y[1] - x[1]) + (v[1] - u[1]); win = (y[2] - x[2]) / 1;
            if (capped) busy -= (y[3] - x[3]) + (v[3] - u[3]);
            o = win > 0 ? 100 * (busy - own) / win : 0; printf "%d", (o < 0 ? 0 : o)}')"
    if [[ "${other:-0}" -gt 10 ]]; then
        note "$target $scenario $proto: disturbed, other processes used ${other}% of a core during the run; repeat it"
    fi
    # Then the load generator's and the origin's CPU ticks (the load side, on the other core), and the tokens
    # cached after the run (empty without METRICS_URL).
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$scenario" "$proto" \
        "$reqs" "$dur" "$p50" "$p99" "$((t1 - t0))" "$CLK_TCK" "$idle" "$load" "${errors:-0}" \
        "$(busy_pct "$pc0" "$pc1")" "$(busy_pct "$lc0" "$lc1")" "${other:-0}" "${tokens:+$(wc -l <"$tokens")}" \
        "$((u1 - u0))" "${gen:-0}" "$((o1 - o0))" "$cached" |
        sed 's/ /\t/g' >>"$RESULTS"
    say "$(printf '  %-20s %-14s %-3s %8s req/s  p50 %6s us  p99 %6s us  busy: proxy core %s%%, load core %s%%, other %s%%' \
        "$target" "$scenario" "$proto" "$(awk -v r="$reqs" -v d="$dur" 'BEGIN {printf "%.0f", r / (d / 1e6)}')" \
        "$p50" "$p99" "$(busy_pct "$pc0" "$pc1")" "$(busy_pct "$lc0" "$lc1")" "${other:-0}")"
}

# Checks that a proxy answers through to the origin; "$1" is the https port.
answers() {
    local port="$1" host="${2:-app.bench.test}" path="${3:-/small}"
    local i
    for i in $(seq 100); do
        if curl -sf --cacert "$CERTS/ca.crt" --resolve "$host:$port:127.0.0.1" "https://$host:$port$path" \
            -o /dev/null 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# The bypass scenarios for a proxy on $port; h2 unless "$3" says h1only.
bypass_scenarios() {
    local target="$1" pid="$2" port="$3" base="${4:-}" protos="h1 h2"
    local scenario path
    for scenario in small 64k paced; do
        want "$SCENARIOS" "$scenario" || continue
        path=/small
        [[ "$scenario" == 64k ]] && path=/bytes/65536
        for proto in $protos; do
            measure "$target" "$scenario" "$proto" "$pid" "https://app.bench.test:$port$base$path"
        done
    done
}

# ---------------------------------------------------------------------------------------------------- targets

# One round measures every target once; ROUNDS > 1 repeats them in turn, so drift of this shared machine
# during the run touches every target alike (the report takes the median of the rounds).
run_targets() {
if want "$TARGETS" origin; then
    say "origin (plain HTTP, no proxy)"
    for scenario in small 64k; do
        want "$SCENARIOS" "$scenario" || continue
        path=/small
        [[ "$scenario" == 64k ]] && path=/bytes/65536
        measure origin "$scenario" h1 "$ORIGIN_PID" "http://app.bench.test:$ORIGIN_PORT$path"
        measure origin "$scenario" h2 "$ORIGIN_PID" "http://app.bench.test:$ORIGIN_PORT$path"
    done
fi

run_portcullis() {
    local name="$1" bin="$2" PC PORT ADMIN PID token alg proto code cookie h
    say "$name ($bin)"
    PC="$TMP/$name"
    mkdir -p "$PC"
    PORT="$(free_port)"
    if [[ -n "$IDP_ISSUER" ]]; then
        # A port whose callback URL the provider knows, one per binary (reused by every round).
        case "$name" in
            portcullis-base) PORT="${SIGNIN_PORTS[0]}" ;;
            portcullis) PORT="${SIGNIN_PORTS[1]}" ;;
            *) PORT="${SIGNIN_PORTS[2]}" ;;
        esac
    fi
    ADMIN="$(free_port)"
    READ_EXTRA="" SERVER_EXTRA=""
    if [[ "$name" == portcullis && -n "${READ_KIB:-}" ]]; then
        READ_EXTRA="upstream_read_buffer_kib = $READ_KIB"
    fi
    if [[ "$name" == portcullis && -n "${RESPONSE_REQUEST_ID:-}" ]]; then
        SERVER_EXTRA="response_request_id = \"$RESPONSE_REQUEST_ID\""
    fi
    cat >"$PC/bench.toml" <<EOF
domain = "bench.test"

[server]
https = "127.0.0.1:$PORT"
admin = "127.0.0.1:$ADMIN"
watch = false
shutdown_grace_secs = 1
# The forward-auth scenario calls from loopback, as nginx's auth_request would.
trusted_proxies = ["127.0.0.1/32"]
$SERVER_EXTRA

[tls]
certs_dir = "$TMP/portcullis-certs"

[[auth.issuers]]
name = "jwks"
issuer = "$ISS_JWKS"
jwks_uri = "http://127.0.0.1:$JWKS_PORT/jwks.json"
audiences = ["$AUD"]
algorithms = ["RS256", "ES256"]

[[auth.issuers]]
name = "hmac"
issuer = "$ISS_HMAC"
secret_file = "$TOK/hmac-secret"
audiences = ["$AUD"]
algorithms = ["HS256"]

[services.app]
upstream = "http://127.0.0.1:$ORIGIN_PORT"
hosts = ["app.bench.test"]
bypass_auth = true
$READ_EXTRA

[services.api]
upstream = "http://127.0.0.1:$ORIGIN_PORT"
hosts = ["api.bench.test"]
issuers = ["jwks", "hmac"]
EOF
    if [[ -n "$IDP_ISSUER" ]]; then
        idp_portcullis_config "$ORIGIN_PORT" >>"$PC/bench.toml"
    fi
    # Access logs are info-level events; warn keeps them off, like `access_log off` for the peers.
    start "$PROXY_CPU" "$PC/log" env RUST_LOG=warn "$bin" run --config "$PC/bench.toml"
    PID=$LAST_PID
    if ! answers "$PORT"; then
        note "$name did not start: $(tail -5 "$PC/log")"
    else
        sleep 1
        bypass_scenarios "$name" "$PID" "$PORT"
        for alg in $ALGS; do
            token="$(cat "$TOK/token-$alg.txt")"
            if want "$SCENARIOS" jwt-hit; then
                for proto in h1 h2; do
                    measure "$name" "jwt-$alg-hit" "$proto" "$PID" "https://api.bench.test:$PORT/small" \
                        "Authorization: Bearer $token"
                done
            fi
            if want "$SCENARIOS" jwt-miss; then
                # h2load cannot vary a header per request: HTTP/1.1 only.
                measure "$name" "jwt-$alg-miss" h1 "$PID" "https://api.bench.test:$PORT/small" "" \
                    "$TOK/tokens-$alg.txt" "http://127.0.0.1:$ADMIN/metrics"
            fi
        done
        if want "$SCENARIOS" forward-auth; then
            # What nginx's auth_request sends for a request to the protected service.
            token="$(cat "$TOK/token-hs256.txt")"
            local fa_headers
            fa_headers="$(printf 'X-Original-URL: https://api.bench.test/small\nX-Original-Method: GET\nAuthorization: Bearer %s' "$token")"
            local fa_curl=()
            while IFS= read -r h; do fa_curl+=(-H "$h"); done <<<"$fa_headers"
            code="$(curl -s -o /dev/null -w '%{http_code}' "${fa_curl[@]}" \
                "http://127.0.0.1:$ADMIN/api/authz/auth-request" || true)"
            if [[ "$code" != 200 ]]; then
                note "forward-auth: $name answers $code, not 200, to a valid call; not measured (log: $(tail -3 "$PC/log"))"
            else
                for proto in h1 h2; do
                    measure "$name" forward-auth "$proto" "$PID" \
                        "http://app.bench.test:$ADMIN/api/authz/auth-request" "$fa_headers"
                done
            fi
        fi
        if want "$SCENARIOS" session; then
            if [[ -n "$IDP_SKIP" ]]; then
                note "session: skipped, $IDP_SKIP"
            elif ! cookie="$(idp_sign_in "$PORT" "$PC/cookies" "$CERTS/ca.crt")" || [[ -z "$cookie" ]]; then
                note "session: $name: the sign-in failed (provider log: $(tail -3 "$TMP/idp.log"))"
            else
                for proto in h1 h2; do
                    measure "$name" session "$proto" "$PID" "https://web.bench.test:$PORT/small" \
                        "Cookie: _portcullis=$cookie"
                done
            fi
        fi
    fi
    stop "$PID"
}

# A second binary measured in the same run (before/after comparisons): PORTCULLIS_BASE_BIN=path.
if [[ -n "${PORTCULLIS_BASE_BIN:-}" ]] && want "$TARGETS" portcullis-base; then
    run_portcullis portcullis-base "$PORTCULLIS_BASE_BIN"
fi
want "$TARGETS" portcullis && run_portcullis portcullis "$PORTCULLIS_BIN"
if [[ -n "${PORTCULLIS_BASE_BIN:-}" ]] && want "$TARGETS" portcullis-base2; then
    run_portcullis portcullis-base2 "$PORTCULLIS_BASE_BIN"
fi

NGINX_TARGETS=""
want "$TARGETS" nginx && NGINX_TARGETS="nginx"
want "$TARGETS" nginx+auth_request && NGINX_TARGETS="$NGINX_TARGETS nginx+auth_request"
if [[ -n "$NGINX_TARGETS" ]]; then
    if ! command -v nginx >/dev/null; then
        note "nginx: not installed (apt-get install -y nginx)"
    else
        NG="$TMP/nginx"
        mkdir -p "$NG"
        PORT="$(free_port)"
        cat >"$NG/nginx.conf" <<EOF
worker_processes 1;
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
        server_name app.bench.test api.bench.test;
        ssl_certificate $CERTS/chain.crt;
        ssl_certificate_key $CERTS/bench.key;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host \$host;
        proxy_set_header X-Forwarded-For \$remote_addr;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-Host \$host;
        proxy_set_header X-Real-IP \$remote_addr;
        proxy_set_header X-Request-Id \$request_id;
        location / {
            proxy_pass http://origin;
        }
        # The shape built today with an auth server: every request first asks it, then goes upstream.
        location /authreq/ {
            auth_request /_auth;
            proxy_pass http://origin/;
        }
        location = /_auth {
            internal;
            proxy_pass http://origin/small;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
    }
}
EOF
        start "$PROXY_CPU" "$NG/out.log" nginx -c "$NG/nginx.conf" -e "$NG/error.log" -g 'daemon off;'
        PID=$LAST_PID
        if ! answers "$PORT"; then
            note "nginx did not start: $(tail -5 "$NG/error.log" "$NG/out.log" 2>/dev/null)"
        else
            sleep 1
            want "$NGINX_TARGETS" nginx && bypass_scenarios nginx "$PID" "$PORT"
            if want "$NGINX_TARGETS" nginx+auth_request && want "$SCENARIOS" small; then
                token="$(cat "$TOK/token-hs256.txt")"
                for proto in h1 h2; do
                    measure nginx+auth_request auth_request "$proto" "$PID" \
                        "https://app.bench.test:$PORT/authreq/small" "Authorization: Bearer $token"
                done
            fi
        fi
        stop "$PID"
    fi
fi

if want "$TARGETS" haproxy; then
    if ! command -v haproxy >/dev/null; then
        note "haproxy: not installed (apt-get install -y haproxy)"
    else
        HA="$TMP/haproxy"
        mkdir -p "$HA"
        PORT="$(free_port)"
        cat >"$HA/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 60s
    timeout http-keep-alive 120s
    option http-keep-alive
    http-reuse always
frontend https
    bind 127.0.0.1:$PORT ssl crt $CERTS/combined.pem alpn h2,http/1.1
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Request-Id %[uuid]
    default_backend origin
backend origin
    server o 127.0.0.1:$ORIGIN_PORT
EOF
        start "$PROXY_CPU" "$HA/out.log" haproxy -db -f "$HA/haproxy.cfg"
        PID=$LAST_PID
        if ! answers "$PORT"; then
            note "haproxy did not start: $(tail -5 "$HA/out.log")"
        else
            sleep 1
            bypass_scenarios haproxy "$PID" "$PORT"
        fi
        stop "$PID"
    fi
fi

if want "$TARGETS" caddy; then
    if ! command -v caddy >/dev/null; then
        note "caddy: not installed (apt-get install -y caddy)"
    else
        CD="$TMP/caddy"
        mkdir -p "$CD"
        PORT="$(free_port)"
        cat >"$CD/Caddyfile" <<EOF
{
    admin off
    auto_https off
    servers {
        protocols h1 h2
    }
}
https://:$PORT {
    bind 127.0.0.1
    tls $CERTS/chain.crt $CERTS/bench.key
    reverse_proxy 127.0.0.1:$ORIGIN_PORT {
        header_up X-Real-IP {remote_host}
        header_up X-Request-Id {http.request.uuid}
        transport http {
            keepalive 90s
            keepalive_idle_conns 64
        }
    }
}
EOF
        start "$PROXY_CPU" "$CD/out.log" env XDG_DATA_HOME="$CD/data" XDG_CONFIG_HOME="$CD/config" HOME="$CD" \
            caddy run --config "$CD/Caddyfile" --adapter caddyfile
        PID=$LAST_PID
        if ! answers "$PORT"; then
            note "caddy did not start: $(tail -5 "$CD/out.log")"
        else
            sleep 1
            bypass_scenarios caddy "$PID" "$PORT"
        fi
        stop "$PID"
    fi
fi
}

for ROUND in $(seq "$ROUNDS"); do
    [[ "$ROUNDS" -gt 1 ]] && say "round $ROUND of $ROUNDS"
    run_targets
done

stop "$ORIGIN_PID"

# ------------------------------------------------------------------------------------------------------ report

mkdir -p "$(dirname "$OUT")"
python3 "$HERE/report.py" "$RESULTS" "$NOTES" "$OUT" "$ROOT" \
    "duration=$DURATION" "warmup=$WARMUP" "connections=$CONNECTIONS" "miss_tokens=$MISS_TOKENS" \
    "proxy_cpu=$PROXY_CPU" "load_cpu=$LOAD_CPU" "binary=$PORTCULLIS_BIN" "paced_rps=$PACED_RPS" \
    ${PROXY_QUOTA:+"proxy_quota_pct=$PROXY_QUOTA"}

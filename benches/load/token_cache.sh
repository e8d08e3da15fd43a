#!/usr/bin/env bash
# Memory of the token caches: what one keeps resident per token against its own estimate, the weight its budget
# bounds. KIND=jwt measures the verified-token cache (`auth.token_cache_mib`, an HS256 issuer); KIND=introspection
# the cache of introspection answers (`auth.introspection_cache_mib`, opaque tokens answered by a small RFC 7662
# endpoint in Python). Starts the echo origin and Portcullis (the cache at MIB) on loopback, warms them with one
# token, then drives TOKENS distinct tokens through wrk for SECS seconds and prints the growth of the gateway's
# resident memory, the tokens the cache holds and its estimated bytes (portcullis_token_cache_{entries,bytes} or
# portcullis_introspection_cache_{entries,bytes} from the admin listener), and both per token.
#
# Usage: benches/load/token_cache.sh
# Environment:
#   KIND=jwt                      jwt or introspection
#   MIB=16 TOKENS=30000 SECS=10   the budget, the distinct tokens, the load's length
#   TOKEN_GROUPS=0                groups per token (0: one group, like run.sh's tokens; 60: a large directory)
#   EXTRA_CLAIMS=0                claims added to the 7 each token has (a Keycloak access token has about 20)
#   NO_BUILD=1                    use the existing release binary;  PORTCULLIS_BIN  binary to measure
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KIND="${KIND:-jwt}"
MIB="${MIB:-16}"
TOKENS="${TOKENS:-30000}"
SECS="${SECS:-10}"
TOKEN_GROUPS="${TOKEN_GROUPS:-0}"
EXTRA_CLAIMS="${EXTRA_CLAIMS:-0}"

say() { printf '%s\n' "$*" >&2; }
die() { say "token_cache: $*"; exit 1; }
for tool in wrk python3 curl taskset; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y wrk python3 curl util-linux"
done
# shellcheck source=benches/load/common.sh
source "$HERE/common.sh"
portcullis_bin
scratch portcullis-token-cache

ORIGIN="$(free_port)" PORT="$(free_port)" ADMIN="$(free_port)" IDP="$(free_port)"
SECRET="token-cache-bench-secret-of-32-bytes-or-more"
printf '%s' "$SECRET" >"$TMP/secret"
# The claims of token n, the same for both kinds (the introspection answer adds "active").
cat >"$TMP/claims.py" <<'PY'
import os, time
NOW, GROUPS, EXTRA = int(time.time()), int(os.environ["TOKEN_GROUPS"]), int(os.environ["EXTRA_CLAIMS"])
def claims(n, iss):
    return {"iss": iss, "aud": "bench", "sub": f"bench-user-{n}", "preferred_username": f"bench{n}",
            "groups": [f"team-{g:04d}-members-{n % 7}" for g in range(GROUPS)] or ["bench"],
            "iat": NOW, "exp": NOW + 6 * 3600, **{f"claim_{k:02d}": f"value-{k}-{n}" for k in range(EXTRA)}}
PY
case "$KIND" in
jwt)
    CACHE=portcullis_token_cache KEY=token_cache_mib
    ISSUER="name = \"hmac\"
issuer = \"token-cache\"
secret_file = \"$TMP/secret\"
audiences = [\"bench\"]"
    TOKEN_GROUPS="$TOKEN_GROUPS" EXTRA_CLAIMS="$EXTRA_CLAIMS" PYTHONPATH="$TMP" python3 - "$SECRET" "$TOKENS" >"$TMP/tokens.txt" <<'PY'
import base64, hashlib, hmac, json, sys
from claims import claims
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
secret, count = sys.argv[1].encode(), int(sys.argv[2])
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
for n in range(count):
    signing = f"{head}.{b(json.dumps(claims(n, 'token-cache'), separators=(',', ':')).encode())}"
    print(signing + "." + b(hmac.new(secret, signing.encode(), hashlib.sha256).digest()))
PY
    ;;
introspection)
    CACHE=portcullis_introspection_cache KEY=introspection_cache_mib
    ISSUER="name = \"opaque\"
issuer = \"http://127.0.0.1:$IDP\"
introspection_endpoint = \"http://127.0.0.1:$IDP/introspect\"
client_id = \"bench\"
client_secret_file = \"$TMP/secret\"
audiences = [\"bench\"]"
    seq 0 $((TOKENS - 1)) | sed 's/^/opaque-bench-/' >"$TMP/tokens.txt"
    # RFC 7662 endpoint: "opaque-bench-N" is active with the claims of token N, anything else is inactive.
    TOKEN_GROUPS="$TOKEN_GROUPS" EXTRA_CLAIMS="$EXTRA_CLAIMS" PYTHONPATH="$TMP" taskset -c 0 python3 - "$IDP" >"$TMP/idp.log" 2>&1 <<'PY' &
import json, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from claims import claims
port = int(sys.argv[1])
class Introspect(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        token = form.get("token", [""])[0]
        n = token.removeprefix("opaque-bench-")
        answer = {"active": False}
        if n != token and n.isdigit():
            answer = {"active": True, **claims(int(n), f"http://127.0.0.1:{port}")}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", port), Introspect).serve_forever()
PY
    STARTED+=("$!")
    ;;
*) die "KIND must be jwt or introspection, not $KIND" ;;
esac
head -1 "$TMP/tokens.txt" >"$TMP/one.txt"
cat >"$TMP/portcullis.toml" <<TOML
domain = "bench.test"
[server]
https = "127.0.0.1:$PORT"
admin = "127.0.0.1:$ADMIN"
watch = false
shutdown_grace_secs = 1
[tls]
certs_dir = "$TMP/certs"
self_signed = true
[auth]
$KEY = $MIB
[[auth.issuers]]
$ISSUER
[services.api]
upstream = "http://127.0.0.1:$ORIGIN"
hosts = ["api.bench.test"]
TOML
taskset -c 0 env RUST_LOG=warn "$PORTCULLIS_BIN" echo --listen "127.0.0.1:$ORIGIN" >"$TMP/origin.log" 2>&1 &
STARTED+=("$!")
taskset -c 1 env RUST_LOG=error "$PORTCULLIS_BIN" run --config "$TMP/portcullis.toml" >"$TMP/portcullis.log" 2>&1 &
PID=$!
STARTED+=("$PID")
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || die "Portcullis did not start: $(tail -5 "$TMP/portcullis.log")"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
load() {
    TOKENS_FILE="$1" taskset -c 0 wrk -t1 -c32 -d"$2s" -s "$HERE/report.lua" -H "Host: api.bench.test" \
        "https://127.0.0.1:$PORT/small" | grep '^WRK_RESULT'
}
load "$TMP/one.txt" 2 >/dev/null
BEFORE="$(rss_kib)"
RESULT="$(load "$TMP/tokens.txt" "$SECS")"
[[ "$RESULT" == *"errors_status=0 "* ]] || die "some requests failed: $RESULT"
sleep 1
AFTER="$(rss_kib)"
metric() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
ENTRIES="$(metric "${CACHE}_entries")"
BYTES="$(metric "${CACHE}_bytes")"
GROWTH=$(( (AFTER - BEFORE) * 1024 ))
printf 'kind=%s mib=%s tokens=%s groups=%s extra_claims=%s %s\n' "$KIND" "$MIB" "$TOKENS" "$TOKEN_GROUPS" \
    "$EXTRA_CLAIMS" "${RESULT#WRK_RESULT }"
printf 'rss_before_kib=%s rss_after_kib=%s growth_bytes=%s entries=%s estimated_bytes=%s\n' \
    "$BEFORE" "$AFTER" "$GROWTH" "$ENTRIES" "$BYTES"
if (( ENTRIES == 0 )); then
    (( MIB == 0 )) || die "the cache holds no token with a budget of $MIB MiB"
    exit 0
fi
printf 'per token: resident %s bytes, estimated %s bytes (estimate / resident %s)\n' \
    "$(( GROWTH / ENTRIES ))" "$(( BYTES / ENTRIES ))" \
    "$(python3 -c "print(f'{$BYTES / max($GROWTH, 1):.2f}')")"

# Sourced by run.sh and instructions.sh: the test OpenID provider (tests/idp, the certified oidc-provider package)
# on loopback, and a browser-like sign-in with curl through Portcullis, for the session scenarios.
# The caller provides ROOT, TMP, the STARTED array (pids it stops on exit) and `say`.

# idp_start CPU CLIENT_ID CLIENT_SECRET PORT...: starts the provider pinned to CPU, with one client whose callback
# URLs are https://auth.bench.test:PORT/oauth2/callback and one user, bench / bench-pw, in the group "staff".
# Sets IDP_ISSUER, or leaves it empty and sets IDP_SKIP to the reason.
idp_start() {
    local cpu="$1" client="$2" secret="$3"
    shift 3
    IDP_ISSUER=""
    IDP_SKIP=""
    IDP_CLIENT="$client"
    IDP_CLIENT_SECRET="$secret"
    if ! command -v node >/dev/null; then
        IDP_SKIP="node is missing (apt-get install -y nodejs npm), then npm ci --prefix tests/idp"
        return
    fi
    if [[ ! -d "$ROOT/tests/idp/node_modules/oidc-provider" ]]; then
        IDP_SKIP="the test OpenID provider is not installed: npm ci --prefix tests/idp"
        return
    fi
    python3 - "$TMP/idp-setup.json" "$client" "$secret" "$@" <<'PY'
import json, sys
out, client, secret, ports = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
json.dump({
    "clients": [{
        "client_id": client,
        "client_secret": secret,
        "redirect_uris": [f"https://auth.bench.test:{p}/oauth2/callback" for p in ports],
        "token_endpoint_auth_method": "client_secret_basic",
    }],
    "users": [{"id": "bench", "password": "bench-pw", "email": "bench@bench.test", "name": "Bench",
               "groups": ["staff"]}],
}, open(out, "w"))
PY
    # The provider exits when its stdin closes: the calling script holds a fifo open until it ends.
    mkfifo "$TMP/idp.stdin"
    exec 7<>"$TMP/idp.stdin"
    taskset -c "$cpu" node "$ROOT/tests/idp/server.mjs" "$TMP/idp-setup.json" <"$TMP/idp.stdin" \
        >"$TMP/idp.out" 2>"$TMP/idp.log" &
    STARTED+=("$!")
    local _
    for _ in $(seq 150); do
        IDP_ISSUER="$(sed -n 's/.*"issuer":"\([^"]*\)".*/\1/p' "$TMP/idp.out" 2>/dev/null | head -1)"
        [[ -n "$IDP_ISSUER" ]] && return
        sleep 0.1
    done
    IDP_SKIP="the test OpenID provider did not start: $(tail -3 "$TMP/idp.log")"
}

# idp_portcullis_config ORIGIN_PORT: the Portcullis configuration for signing in with the provider: the client
# idp_start registered, an in-process session store, and the protected service web.bench.test on the origin.
idp_portcullis_config() {
    cat <<TOML

[oidc]
issuer = "$IDP_ISSUER"
client_id = "$IDP_CLIENT"
client_secret = "$IDP_CLIENT_SECRET"
token_endpoint_auth_method = "client_secret_basic"

[session]
secret = "bench-session-secret-at-least-32-bytes-long"
store = "memory"

[services.web]
upstream = "http://127.0.0.1:$1"
hosts = ["web.bench.test"]
allow_groups = ["staff"]
TOML
}

# idp_sign_in PORT JAR CA: signs in the way a browser does, through Portcullis on PORT (web.bench.test, a service
# that needs the group "staff", and its portal auth.bench.test), trusting CA; prints the session cookie's value.
# The protected page redirects to the provider's login form; posting the credentials goes back through the
# callback, which sets the cookie and returns to the page.
idp_sign_in() {
    local port="$1" jar="$2" ca="$3" form action final
    rm -f "$jar" # a fresh browser: no provider session from an earlier round
    local c=(curl -s --max-time 60 --cacert "$ca" -c "$jar" -b "$jar"
        --resolve "web.bench.test:$port:127.0.0.1" --resolve "auth.bench.test:$port:127.0.0.1")
    form="$("${c[@]}" -L -H 'Accept: text/html' "https://web.bench.test:$port/small")" || return 1
    action="$(sed -n 's/.*<form method="post" action="\([^"]*\)".*/\1/p' <<<"$form" | head -1)"
    [[ -n "$action" ]] || { say "sign-in: no login form; got: ${form:0:300}"; return 1; }
    final="$("${c[@]}" -L -o /dev/null -w '%{http_code} %{url_effective}' \
        --data-urlencode login=bench --data-urlencode password=bench-pw "$IDP_ISSUER$action")" || return 1
    [[ "$final" == "200 https://web.bench.test:$port/small" ]] ||
        { say "sign-in: ended at $final, not at the protected page"; return 1; }
    awk '$6 == "_portcullis" {print $7}' "$jar" | tail -1
}

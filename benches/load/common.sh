# Sourced by instructions.sh, idle_conns.sh and token_cache.sh: the binary to measure, a scratch directory that is
# removed on exit with every process started into it stopped, free loopback ports and test certificates. The
# caller provides ROOT and `die`.

# portcullis_bin: sets PORTCULLIS_BIN, building the release binary first unless PORTCULLIS_BIN or NO_BUILD is set.
portcullis_bin() {
    if [[ -z "${PORTCULLIS_BIN:-}" ]]; then
        if [[ -z "${NO_BUILD:-}" ]]; then
            (cd "$ROOT" && cargo build --release --quiet) || die "release build failed"
        fi
        PORTCULLIS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis"
    fi
    [[ -x "$PORTCULLIS_BIN" ]] || die "no binary at $PORTCULLIS_BIN"
}

# scratch NAME: makes TMP (/tmp/NAME.XXXXXX) and STARTED, the pids to stop; on exit the processes in STARTED are
# stopped and TMP is removed, and an interrupt exits through the same path.
scratch() {
    TMP="$(mktemp -d "/tmp/$1.XXXXXX")"
    STARTED=()
    trap scratch_cleanup EXIT
    trap 'exit 130' INT TERM
}

scratch_cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_certs DIR: a throw-away CA (ca.crt, ca.key) and a certificate for bench.test and *.bench.test signed by it
# (bench.crt, bench.key), in DIR; also pc-certs/ for Portcullis's certs_dir (the chain and its key) and
# combined.pem for HAProxy (chain and key in one file).
bench_certs() {
    (
        cd "$1"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
            -keyout ca.key -out ca.crt -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench.test" \
            -keyout bench.key -out bench.csr 2>/dev/null
        printf 'subjectAltName=DNS:bench.test,DNS:*.bench.test\n' >ext.cnf
        openssl x509 -req -in bench.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf \
            -out bench.crt 2>/dev/null
        mkdir -p pc-certs
        cat bench.crt ca.crt >pc-certs/bench.crt
        cp bench.key pc-certs/bench.key
        cat bench.crt ca.crt bench.key >combined.pem
    ) || die "openssl could not make the test certificates"
}

# Sourced by instructions.sh and token_cache.sh: the binary to measure, a scratch directory that is removed on
# exit with every process started into it stopped, and free loopback ports. The caller provides ROOT and `die`.

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

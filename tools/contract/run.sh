#!/usr/bin/env bash
# The contract run (issue 8): starts BINARY on a fresh SQLite data directory with registered
# demo clients, checks openapi/linkbridge.openapi.yaml with openapi-spec-validator, then runs
# schemathesis against the live server with real access tokens (tools/contract/hooks.py) and
# the checks of tools/contract/schemathesis.toml. Exits non-zero if the spec is invalid or any
# check fails; the server is stopped and the data directory removed however it ends.
#
#   tools/contract/run.sh target/debug/linkbridge [schemathesis run options...]
#
# Needs python3 (with venv; PyPI reachable on the first run), openssl and curl.
#
# Extra options go to `schemathesis run`, e.g. `--phases examples,coverage` or
# `--include-path-regex '^/Task'` to look at one part of the API.
#
# Environment:
#   LINKBRIDGE_CONTRACT_VENV          venv for schemathesis and openapi-spec-validator
#                                     (default ~/.cache/linkbridge-contract-venv; created from
#                                     tools/contract/requirements.txt, reinstalled when it changes)
#   LINKBRIDGE_CONTRACT_MAX_TIME      seconds schemathesis may test for (default 180: with the set-up
#                                     the whole run stays under four minutes on two cores)
#   LINKBRIDGE_CONTRACT_MAX_EXAMPLES  generated cases per operation in one fuzzing pass (default 10)
#   LINKBRIDGE_CONTRACT_SEED          hypothesis seed, to replay a run (default: random, printed)
#   LINKBRIDGE_CONTRACT_REPORT_DIR    keep schemathesis' JUnit report and the server log there
#   LINKBRIDGE_CONTRACT_SPEC          another OpenAPI file to check and test (default: the repo's)
set -euo pipefail

usage() { echo "usage: $0 path/to/linkbridge [schemathesis run options...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
BINARY="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
[[ -x "$BINARY" ]] || { echo "$0: $1 is not an executable" >&2; exit 2; }
shift

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SPEC="${LINKBRIDGE_CONTRACT_SPEC:-$ROOT/openapi/linkbridge.openapi.yaml}"
SPEC="$(cd "$(dirname "$SPEC")" && pwd)/$(basename "$SPEC")"
VENV="${LINKBRIDGE_CONTRACT_VENV:-$HOME/.cache/linkbridge-contract-venv}"
MAX_TIME="${LINKBRIDGE_CONTRACT_MAX_TIME:-180}"
MAX_EXAMPLES="${LINKBRIDGE_CONTRACT_MAX_EXAMPLES:-10}"
SEED="${LINKBRIDGE_CONTRACT_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
started=$SECONDS

log() { printf '\n=== contract: %s ===\n' "$*"; }

# ---------------------------------------------------------------- tools
requirements_hash="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ "$(cat "$VENV/.requirements-sha256" 2>/dev/null)" != "$requirements_hash" ]]; then
    log "installing tools/contract/requirements.txt into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
    echo "$requirements_hash" >"$VENV/.requirements-sha256"
fi

log "openapi-spec-validator"
"$VENV/bin/openapi-spec-validator" "$SPEC"

# ---------------------------------------------------------------- server
DATA="$(mktemp -d "${TMPDIR:-/tmp}/linkbridge-contract.XXXXXX")"
SERVER_PID=""
cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -f "$DATA/server.log" ]]; then
        echo "--- last lines of the server log ($DATA/server.log) ---" >&2
        tail -n 40 "$DATA/server.log" >&2 || true
    fi
    if [[ -n "${LINKBRIDGE_CONTRACT_REPORT_DIR:-}" && -f "$DATA/server.log" ]]; then
        mkdir -p "$LINKBRIDGE_CONTRACT_REPORT_DIR" && cp "$DATA/server.log" "$LINKBRIDGE_CONTRACT_REPORT_DIR/"
    fi
    cd / && rm -rf "$DATA"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "demo clients"
"$BINARY" --data-dir "$DATA" demo setup >/dev/null
# An operator client, for the operator-only endpoints (audit trail, outbox status). `demo token`
# signs with data-dir/demo-clients/<client>.pem, so its key goes there too; its JWK's kid is the
# RFC 7638 thumbprint, as the server computes it (src/auth/keys.rs).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$DATA/demo-clients/demo-operator.pem" 2>/dev/null
chmod 600 "$DATA/demo-clients/demo-operator.pem"
openssl pkey -in "$DATA/demo-clients/demo-operator.pem" -pubout -outform DER >"$DATA/demo-operator.der"
python3 - "$DATA/demo-operator.der" >"$DATA/demo-operator.jwks.json" <<'EOF'
import base64, hashlib, json, sys
point = open(sys.argv[1], "rb").read()[-97:]  # SubjectPublicKeyInfo ends with 04 || X || Y
assert point[0] == 4, "uncompressed P-384 point expected"
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
x, y = b64(point[1:49]), b64(point[49:97])
members = json.dumps({"crv": "P-384", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True)
kid = b64(hashlib.sha256(members.encode()).digest())
print(json.dumps({"keys": [{"kty": "EC", "crv": "P-384", "x": x, "y": y, "kid": kid, "alg": "ES384", "use": "sig"}]}))
EOF
"$BINARY" --data-dir "$DATA" clients add --client-id demo-operator --organization DEMOOPS1 --role operator \
    --jwks-file "$DATA/demo-operator.jwks.json" >/dev/null

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SERVER="http://127.0.0.1:$PORT"
log "starting $BINARY on $SERVER"
# A slow CI machine must not turn the settle rule into 503s: a write is refused when it cannot
# commit within half of settle_window_ms (src/service/search.rs). A longer window only delays
# what `_lastUpdated` searches see, which this run does not depend on.
LINKBRIDGE_SETTLE_WINDOW_MS=60000 LINKBRIDGE_LOG="${LINKBRIDGE_LOG:-warn}" \
    "$BINARY" --data-dir "$DATA" --listen "127.0.0.1:$PORT" serve >"$DATA/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 150); do
    curl -sf "$SERVER/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited" >&2; exit 1; }
    sleep 0.2
done
curl -sf "$SERVER/readyz" >/dev/null || { echo "the server did not become ready" >&2; exit 1; }

# ---------------------------------------------------------------- schemathesis
log "schemathesis (seed $SEED, $MAX_TIME s, $MAX_EXAMPLES examples per operation and pass)"
report_args=()
if [[ -n "${LINKBRIDGE_CONTRACT_REPORT_DIR:-}" ]]; then
    mkdir -p "$LINKBRIDGE_CONTRACT_REPORT_DIR"
    LINKBRIDGE_CONTRACT_REPORT_DIR="$(cd "$LINKBRIDGE_CONTRACT_REPORT_DIR" && pwd)"
    report_args=(--report junit --report-dir "$LINKBRIDGE_CONTRACT_REPORT_DIR")
fi
status=0
# From the data directory, so schemathesis' own cache (.schemathesis/) goes with it.
cd "$DATA"
LB_CONTRACT_BINARY="$BINARY" LB_CONTRACT_DATA_DIR="$DATA" LB_CONTRACT_SERVER="$SERVER" \
SCHEMATHESIS_HOOKS="$HERE/hooks.py" PYTHONDONTWRITEBYTECODE=1 \
    "$VENV/bin/schemathesis" --no-color --config-file "$HERE/schemathesis.toml" run "$SPEC" \
    --url "$SERVER" --max-time "$MAX_TIME" --max-examples "$MAX_EXAMPLES" --seed "$SEED" "${report_args[@]}" "$@" || status=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "the server died during the run" >&2
    status=1
fi
log "finished in $((SECONDS - started)) s with status $status"
exit $status

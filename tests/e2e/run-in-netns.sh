#!/usr/bin/env bash
# Runs the browser e2e test (tests/e2e/demo.mjs) against the real server binary
# inside a fresh network namespace that has only `lo`: proves the demo works
# with no internet, no STUN/TURN, nothing but the server on 127.0.0.1. The
# server mints TURN credentials (TURN_SECRET, TURN_URLS) for a TURN server that
# is not there: the page must get them with its token and still connect over lo.
#
#   tests/e2e/run-in-netns.sh [SERVER_BINARY]     (default target/debug/rtcio-signal)
#
# Needs: root (or CAP_SYS_ADMIN) for `unshare --net`, node, /usr/bin/chromium.
# Env: E2E_PORT (default 0 = let the server pick; the URL is read from its
#      "rtcio-signal listening on http://..." line), E2E_SERVER_ARGS (extra args),
#      SKIP_BUILD_DEMO=1 to reuse an existing client-demo/dist/app.js.
# Exit status is the test's; the server log is kept in artifacts/e2e/server.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,15p' "$0"
  exit 0
fi

SERVER_BIN="${1:-target/debug/rtcio-signal}"
if [[ "$SERVER_BIN" != /* ]]; then SERVER_BIN="$ROOT/$SERVER_BIN"; fi
[[ -x "$SERVER_BIN" ]] || { echo "run-in-netns: server binary not found or not executable: $SERVER_BIN" >&2; exit 2; }
command -v node >/dev/null || { echo "run-in-netns: node not found" >&2; exit 2; }
[[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]] || { echo "run-in-netns: chromium not found at ${CHROMIUM_PATH:-/usr/bin/chromium}" >&2; exit 2; }

if [[ "${SKIP_BUILD_DEMO:-}" != 1 || ! -f client-demo/dist/app.js ]]; then
  npm run --silent build:demo
fi

mkdir -p artifacts/e2e
export SERVER_BIN ROOT
export E2E_PORT="${E2E_PORT:-0}"
export E2E_SERVER_ARGS="${E2E_SERVER_ARGS:-}"
export TURN_SECRET="${TURN_SECRET:-e2e-turn-secret}" TURN_URLS="${TURN_URLS:-turn:127.0.0.1:3478}"

# Everything below runs inside the new namespace; the server dies with it.
exec unshare --net -- bash -c '
  set -euo pipefail
  cd "$ROOT"
  ip link set lo up

  LOG=artifacts/e2e/server.log
  : > "$LOG"
  FIFO="$(mktemp -u /tmp/rtcio-e2e.XXXXXX)"
  mkfifo "$FIFO"
  SERVER_PID=
  cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
      kill "$SERVER_PID" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    rm -f "$FIFO"
  }
  trap cleanup EXIT
  trap "exit 130" INT TERM

  # shellcheck disable=SC2086
  "$SERVER_BIN" --dev --demo-dir client-demo --host 127.0.0.1 --port "$E2E_PORT" $E2E_SERVER_ARGS \
    > "$FIFO" 2> "$LOG.stderr" &
  SERVER_PID=$!

  # Read stdout until the ready line; keep copying the rest to the log.
  exec 3< "$FIFO"
  URL=
  deadline=$((SECONDS + 30))
  while (( SECONDS < deadline )); do
    if ! IFS= read -r -t 1 line <&3; then
      kill -0 "$SERVER_PID" 2>/dev/null || { echo "run-in-netns: server exited before listening; stderr:" >&2; cat "$LOG.stderr" >&2; exit 1; }
      continue
    fi
    printf "%s\n" "$line" >> "$LOG"
    if [[ "$line" =~ rtcio-signal\ listening\ on\ (http://[^[:space:]]+) ]]; then
      URL="${BASH_REMATCH[1]}"
      break
    fi
  done
  [[ -n "$URL" ]] || { echo "run-in-netns: no \"rtcio-signal listening on\" line within 30 s" >&2; cat "$LOG.stderr" >&2; exit 1; }
  cat <&3 >> "$LOG" &

  echo "run-in-netns: server $SERVER_BIN on $URL (pid $SERVER_PID), network namespace has: $(ip -brief link | cut -d" " -f1 | paste -sd" ")"
  status=0
  # The test also checks that no room password it used shows up in the server log.
  SERVER_URL="$URL" E2E_SERVER_LOG="$PWD/$LOG" node tests/e2e/demo.mjs || status=$?
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "run-in-netns: the server died during the test (see $LOG.stderr)" >&2; status=1; }
  exit "$status"
'

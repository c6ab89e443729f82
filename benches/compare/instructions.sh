#!/usr/bin/env bash
# Instructions per proxied request on the token-cache-hit path, counted by callgrind: a figure
# that does not move with the load on the machine, so two builds (say, before and after a
# change) can be compared on a busy box where timings cannot.
#
#   benches/compare/instructions.sh [--requests N] BINARY [BINARY ...]
#
# For each binary: an nginx origin (`return 200`), the gateway with a bootstrap admin and a
# token from a real login (taken natively, before valgrind), then the gateway under callgrind:
# warm-up requests with counting off, N requests over one keep-alive connection (curl) with
# counting on. Prints instructions per request and the share spent in the allocator.
# Needs valgrind, nginx and curl (apt-get install valgrind nginx-light curl).
set -euo pipefail
# shellcheck source=origin.sh
source "$(dirname "${BASH_SOURCE[0]}")/origin.sh"

REQUESTS=2000
WARMUP=200
BASE_PORT=${MEIRO_COMPARE_BASE_PORT:-18200}
ORIGIN_PORT=$((BASE_PORT + 1))
GATE_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))

die() { printf 'instructions: FATAL: %s\n' "$*" >&2; exit 1; }
while (($#)); do
  case $1 in
    --requests) REQUESTS=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) break ;;
  esac
done
(($#)) || die "usage: $0 [--requests N] BINARY [BINARY ...]"
for tool in valgrind callgrind_control nginx curl; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

W=$(mktemp -d /tmp/meiro-instructions.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || rm -rf "$W"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on 127.0.0.1:$1"
}

mkdir -p "$W/origin"
origin_nginx_conf "$W/origin" "$ORIGIN_PORT" "$W/origin/error.log" >"$W/origin/nginx.conf"
nginx -p "$W/origin" -c "$W/origin/nginx.conf" -e "$W/origin/error.log" &
PIDS+=($!)
wait_port "$ORIGIN_PORT"

ADMIN_EMAIL=bench@example.com
ADMIN_PASSWORD=bench-password-1234
export RUST_LOG=warn

# Only keys every version of the gateway accepts, plus `access_log = false` where it exists.
gate_config() { # $1: dir, $2: extra [server] lines
  cat <<EOF
[server]
listen = "127.0.0.1:$GATE_PORT"
public_url = "http://127.0.0.1:$GATE_PORT"
$2
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[store]
url = "sqlite://$1/gate.db"
[auth]
keys_dir = "$1/keys"
cookie_secure = false
[bootstrap]
admin_email = "$ADMIN_EMAIL"
admin_password = "$ADMIN_PASSWORD"
$(origin_route_toml "$ORIGIN_PORT")
EOF
}

printf '%-60s %14s %10s\n' binary instructions/req malloc%
for bin in "$@"; do
  [[ -x $bin ]] || die "$bin is not an executable"
  dir="$W/$(basename "$bin")-$RANDOM"
  mkdir -p "$dir"
  gate_config "$dir" 'access_log = false' >"$dir/gate.toml"
  if ! "$bin" check-config --config "$dir/gate.toml" >/dev/null 2>&1; then
    gate_config "$dir" '' >"$dir/gate.toml"
  fi
  "$bin" check-config --config "$dir/gate.toml" >/dev/null || die "$bin rejects its config"

  # A token from a real login, taken natively (argon2 under valgrind takes seconds).
  "$bin" serve --config "$dir/gate.toml" >"$dir/native.log" 2>&1 &
  native=$!
  wait_port "$GATE_PORT"
  token=$(curl -sf -X POST "http://127.0.0.1:$GATE_PORT/users/login" \
    -H 'content-type: application/json' \
    -d "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}" \
    | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  [[ -n $token ]] || die "login failed on $bin: $(tail -n5 "$dir/native.log")"
  kill "$native"; wait "$native" 2>/dev/null || true

  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" \
    "$bin" serve --config "$dir/gate.toml" >"$dir/valgrind.log" 2>&1 &
  gate=$!
  PIDS+=("$gate")
  wait_port "$GATE_PORT"
  run() { # $1: requests — one keep-alive connection, sequential
    curl -sf -o /dev/null -H "x-access-token: $token" \
      "http://127.0.0.1:$GATE_PORT/bench?[1-$1]" || die "a proxied request failed on $bin"
  }
  run "$WARMUP"
  callgrind_control -i on "$gate" >/dev/null 2>&1
  run "$REQUESTS"
  callgrind_control -i off "$gate" >/dev/null 2>&1
  kill -INT "$gate"; wait "$gate" 2>/dev/null || true
  total=$(callgrind_annotate "$dir"/callgrind.out* 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",","",$1); t = $1} END {print t}')
  [[ -n $total ]] || die "no callgrind totals for $bin: $(tail -n5 "$dir/valgrind.log")"
  # Self cost of the allocator: glibc malloc and friends, or mimalloc (mi_*).
  alloc=$(callgrind_annotate --threshold=100 "$dir"/callgrind.out* 2>/dev/null \
    | awk '(/libc[.-]/ && /(malloc|free|realloc|calloc|tcache)/) || /\?\?\?:_?mi_/ {gsub(",","",$1); s+=$1} END {print s+0}')
  awk -v b="$bin" -v t="$total" -v n="$REQUESTS" -v a="$alloc" \
    'BEGIN { printf "%-60s %14d %9.1f%%\n", b, t / n, 100 * a / t }'
done

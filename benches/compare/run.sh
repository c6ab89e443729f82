#!/usr/bin/env bash
# Load comparison: meiro-gate against nginx (plain reverse proxy) and HAProxy (jwt_verify),
# each in front of the same origin (nginx `return 200`, one worker). One command:
#
#   benches/compare/run.sh [--rounds N] [--duration S] [--rate R] [--memory] [--quick] ...
#
# Placement (2 cores): the proxy under test alone on core 1 (one worker thread / process),
# the load generators and the origin on core 0. Contenders are interleaved (A B C D, A B C D, …)
# and the medians over the rounds are printed, with ratios to meiro-gate.
# Traffic goes to 127.0.0.1 only. See README.md, "Benchmarks", for what each figure means.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=origin.sh
source "$REPO/benches/compare/origin.sh"

ROUNDS=3
DURATION=6          # seconds per closed-loop (wrk) run
FIXED_DURATION=6    # seconds per fixed-rate run (plus 1 s warm-up)
RATE=2000           # the "moderate" fixed rate, requests/s
CONNECTIONS=32      # wrk connections (closed loop)
FIXED_CONNECTIONS=16
MISS_TOKENS=10000
STORM=1
STORM_RATE=50       # logins/s
MEMORY=0
MEMORY_TOKENS=1000000
INSTALL=1
BUILD=1
PROFILE=release
DRY_RUN=0
KEEP=0
RENICE=1
BASE_PORT=${MEIRO_COMPARE_BASE_PORT:-18100}

usage() {
  cat <<EOF
usage: $0 [options]
  --rounds N          interleaved rounds, medians printed (default $ROUNDS, at least 3 for the README)
  --duration S        seconds per closed-loop run (default $DURATION)
  --rate R            fixed rate for the added-p99 runs, requests/s (default $RATE)
  --connections C     wrk connections (default $CONNECTIONS)
  --no-storm          skip the login-storm isolation runs
  --memory            also measure RSS with --memory-tokens distinct cached tokens (slow: minutes)
  --memory-tokens N   (default $MEMORY_TOKENS)
  --quick             smoke run: 1 round of 2 s runs, no storm
  --dry-run           check tools, build, write the configs and check them; run no load
  --debug             use the debug build (target/debug; only sensible with --dry-run, as CI does)
  --no-install        do not apt-get missing tools
  --no-build          use the binaries already in \$CARGO_TARGET_DIR/release (no cargo build)
  --no-renice         do not raise the benchmark processes' priority (nice -10, root only)
  --keep              keep the work directory (configs, logs, raw results)
Environment: CARGO_TARGET_DIR (default <repo>/target), MEIRO_COMPARE_BASE_PORT (default 18100;
ports BASE+1 … BASE+6 on 127.0.0.1 must be free).
EOF
}

while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; FIXED_DURATION=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --connections) CONNECTIONS=$2; shift ;;
    --no-storm) STORM=0 ;;
    --memory) MEMORY=1 ;;
    --memory-tokens) MEMORY_TOKENS=$2; shift ;;
    --quick) ROUNDS=1; DURATION=2; FIXED_DURATION=2; STORM=0; MISS_TOKENS=2000 ;;
    --dry-run) DRY_RUN=1; MISS_TOKENS=100 ;;
    --debug) PROFILE=debug ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --no-renice) RENICE=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\ncompare: FATAL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- machine and tools
[[ $(uname -s) == Linux ]] || die "Linux only (/proc, taskset)"
CORES=$(nproc --all)
((CORES >= 2)) || die "needs 2 cores (the proxy on one, load generator + origin on the other); this machine has $CORES"
LOADGEN_CPU=0
PROXY_CPU=1

need=()
for tool in nginx haproxy wrk curl taskset; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if ((${#need[@]})); then
  ((INSTALL)) || die "missing tools: ${need[*]} (run without --no-install, or apt-get install nginx haproxy wrk curl)"
  [[ $(id -u) == 0 ]] || die "missing tools: ${need[*]}; run as root to install them with apt-get"
  pkgs=()
  for tool in "${need[@]}"; do
    case $tool in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$tool") ;; esac
  done
  log "installing ${pkgs[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 || die "apt-get install ${pkgs[*]} failed"
fi
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/.*nginx\///')
# No `| head` under pipefail: the writer would die of SIGPIPE and fail the pipeline.
HAPROXY_VERSION=$(haproxy -v | awk 'NR == 1 {print $3}')
WRK_VERSION=$(wrk --version 2>&1 | awk 'NR == 1 {print $2}' || true)
CLK_TCK=$(getconf CLK_TCK)

PRIO=()
if ((RENICE)) && [[ $(id -u) == 0 ]]; then
  # Other jobs on a shared machine (compilers) then take the CPU second, not the benchmark.
  PRIO=(nice -n -10)
fi

# ---------------------------------------------------------------- build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if ((BUILD)); then
  log "building meiro-gate ($PROFILE) and the load tools in $CARGO_TARGET_DIR"
  cargo_profile=(--release)
  [[ $PROFILE == release ]] || cargo_profile=()
  (cd "$REPO" && cargo build --locked "${cargo_profile[@]}" --quiet --bin meiro-gate --example mint_tokens --example loadgen) \
    || die "cargo build ($PROFILE) failed"
fi
GATE_BIN=$CARGO_TARGET_DIR/$PROFILE/meiro-gate
MINT_BIN=$CARGO_TARGET_DIR/$PROFILE/examples/mint_tokens
LOADGEN_BIN=$CARGO_TARGET_DIR/$PROFILE/examples/loadgen
for bin in "$GATE_BIN" "$MINT_BIN" "$LOADGEN_BIN"; do
  [[ -x $bin ]] || die "missing $bin after the build"
done

# ---------------------------------------------------------------- work dir, cleanup
W=$(mktemp -d /tmp/meiro-compare.XXXXXX)
declare -A PID=()       # name -> pid of every process we started
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for name in "${!PID[@]}"; do
    local pid=${PID[$name]}
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for name in "${!PID[@]}"; do
    local pid=${PID[$name]}
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if ((KEEP)) || ((status != 0)); then
    log "work directory kept: $W"
  else
    rm -rf "$W"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ORIGIN_PORT=$((BASE_PORT + 1))
GATE_PORT=$((BASE_PORT + 2))
GATE_ADMIN_PORT=$((BASE_PORT + 3))
NGINX_PORT=$((BASE_PORT + 4))
HAPROXY_PORT=$((BASE_PORT + 5))
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $ORIGIN_PORT $GATE_PORT $GATE_ADMIN_PORT $NGINX_PORT $HAPROXY_PORT; do
  if port_busy "$port" || [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]]; then
    die "port 127.0.0.1:$port is busy (set MEIRO_COMPARE_BASE_PORT to move the range)"
  fi
done

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- configs
mkdir -p "$W"/{origin,nginx,haproxy,gate,logs}
origin_nginx_conf "$W/origin" "$ORIGIN_PORT" "$W/logs/origin.log" >"$W/origin/nginx.conf"

cat >"$W/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/logs/nginx.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

# ES256 on both sides: HAProxy 2.6's jwt_verify has no EdDSA, and HS256 would need a shared
# secret meiro-gate does not use. ES256 is what both verify with a public key.
cat >"$W/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    http-request set-var(txn.token) req.hdr(x-access-token)
    http-request deny status 401 unless { var(txn.token) -m found }
    # alg pinned: the header must say ES256 and the signature must verify as ES256.
    http-request set-var(txn.alg) var(txn.token),jwt_header_query('\$.alg')
    http-request deny status 401 unless { var(txn.alg) -m str ES256 }
    http-request deny status 401 unless { var(txn.token),jwt_verify("ES256","$W/haproxy/pub.pem") -m int 1 }
    # exp required and in the future.
    http-request set-var(txn.exp) var(txn.token),jwt_payload_query('\$.exp','int')
    http-request deny status 401 unless { var(txn.exp) -m found }
    http-request set-var(txn.now) date()
    http-request deny status 401 if { var(txn.exp),sub(txn.now) -m int le 0 }
    default_backend origin
backend origin
    server origin 127.0.0.1:$ORIGIN_PORT
EOF

gate_config() { # $1: access_token_ttl
  cat <<EOF
[server]
listen = "127.0.0.1:$GATE_PORT"
public_url = "http://127.0.0.1:$GATE_PORT"
access_log = false
worker_threads = 1
[admin]
listen = "127.0.0.1:$GATE_ADMIN_PORT"
[store]
url = "sqlite://$W/gate/gate.db"
[auth]
keys_dir = "$W/gate/keys"
signing_algorithm = "ES256"
cookie_secure = false
access_token_ttl = "$1"
[auth.login_throttle]
# The storm logs one account in 50 times a second: the test is about CPU isolation, and a
# concurrent attempt counts against the limit until it succeeds.
per_account = 1000000
per_ip = 1000000
[mail]
dir = "$W/gate/outbox"
$(origin_route_toml "$ORIGIN_PORT")
EOF
}
gate_config 8h >"$W/gate/gate.toml"
gate_config 1s >"$W/gate/gate-short.toml"


# ---------------------------------------------------------------- tokens and users
export RUST_LOG=warn
log "minting tokens (ES256 key, no argon2)"
"$MINT_BIN" --config "$W/gate/gate.toml" --count 1 --public-key-pem "$W/haproxy/pub.pem" \
  >"$W/hit_token.txt" 2>"$W/logs/mint.log" || die "mint_tokens failed: $(tail -n5 "$W/logs/mint.log")"
"$MINT_BIN" --config "$W/gate/gate.toml" --count "$MISS_TOKENS" \
  >"$W/miss_tokens.txt" 2>>"$W/logs/mint.log" || die "mint_tokens failed: $(tail -n5 "$W/logs/mint.log")"
"$MINT_BIN" --config "$W/gate/gate-short.toml" --count 1 \
  >"$W/expired_token.txt" 2>>"$W/logs/mint.log" || die "mint_tokens failed: $(tail -n5 "$W/logs/mint.log")"
EXPIRED_AT=$(($(date +%s) + 2))
TOKEN=$(cat "$W/hit_token.txt")
STORM_EMAIL=storm@example.com
STORM_PASSWORD=storm-password-1234
printf '%s\n' "$STORM_PASSWORD" | "$GATE_BIN" --config "$W/gate/gate.toml" users add \
  --email "$STORM_EMAIL" --password-stdin >/dev/null 2>>"$W/logs/mint.log" \
  || die "meiro-gate users add failed: $(tail -n5 "$W/logs/mint.log")"
haproxy -c -q -f "$W/haproxy/haproxy.cfg" >"$W/logs/haproxy-check.log" 2>&1 \
  || die "haproxy rejects its config: $(cat "$W/logs/haproxy-check.log")"
nginx -t -q -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/logs/nginx.log" >/dev/null 2>&1 \
  || die "nginx rejects its proxy config: $(tail -n5 "$W/logs/nginx.log")"
"$GATE_BIN" --config "$W/gate/gate.toml" check-config >/dev/null 2>"$W/logs/gate-check.log" \
  || die "meiro-gate rejects its config: $(cat "$W/logs/gate-check.log")"

if ((DRY_RUN)); then
  log "dry run: tools, build, tokens and configs OK (nginx $NGINX_VERSION, HAProxy $HAPROXY_VERSION, wrk $WRK_VERSION)"
  exit 0
fi

# ---------------------------------------------------------------- processes
wait_port() { # name port
  for _ in $(seq 1 100); do
    port_busy "$2" && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || die "$1 exited at startup: $(tail -n5 "$W/logs/$1.log" 2>/dev/null)"
    sleep 0.1
  done
  die "$1 did not listen on 127.0.0.1:$2 within 10 s"
}
start() { # name core port command…
  local name=$1 core=$2 port=$3
  shift 3
  # Not through a shell function: `$!` must be the server itself (nice and taskset exec it).
  "${PRIO[@]}" taskset -c "$core" "$@" >>"$W/logs/$name.log" 2>&1 &
  PID[$name]=$!
  wait_port "$name" "$port"
}
alive() {
  for name in "$@"; do
    kill -0 "${PID[$name]}" 2>/dev/null || die "$name (pid ${PID[$name]}) died: $(tail -n5 "$W/logs/$name.log")"
  done
}
stop() {
  local pid=${PID[$1]}
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && die "$1 did not stop on SIGTERM"
  unset "PID[$1]"
}
start_gate() { start gate "$PROXY_CPU" "$GATE_PORT" "$GATE_BIN" --config "$W/gate/gate.toml" --log-format text serve; }

log "starting the origin (core $LOADGEN_CPU) and the proxies (core $PROXY_CPU)"
start origin "$LOADGEN_CPU" "$ORIGIN_PORT" nginx -p "$W/origin" -c "$W/origin/nginx.conf" -e "$W/logs/origin.log"
start nginx "$PROXY_CPU" "$NGINX_PORT" nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/logs/nginx.log"
start haproxy "$PROXY_CPU" "$HAPROXY_PORT" haproxy -db -f "$W/haproxy/haproxy.cfg"
start_gate

# ---------------------------------------------------------------- sanity: each contender does what it claims
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
expect() { # what expected-status curl-args…
  local what=$1 want=$2
  shift 2
  local got
  got=$(status_of "$@")
  [[ $got == "$want" ]] || die "$what: expected HTTP $want, got $got"
}
URL_DIRECT=http://127.0.0.1:$ORIGIN_PORT/api/resource
URL_GATE=http://127.0.0.1:$GATE_PORT/api/resource
URL_NGINX=http://127.0.0.1:$NGINX_PORT/api/resource
URL_HAPROXY=http://127.0.0.1:$HAPROXY_PORT/api/resource
# A changed signature byte (not the last character: its low bits are padding, which lenient
# base64 decoders ignore).
TAMPERED=${TOKEN:0:${#TOKEN}-10}$([[ ${TOKEN: -10:1} == A ]] && echo B || echo A)${TOKEN: -9}
expect "origin" 200 "$URL_DIRECT"
expect "nginx proxy" 200 "$URL_NGINX"
expect "meiro-gate with a token" 200 -H "x-access-token: $TOKEN" "$URL_GATE"
expect "meiro-gate without a token" 401 "$URL_GATE"
expect "meiro-gate with a tampered token" 401 -H "x-access-token: $TAMPERED" "$URL_GATE"
expect "haproxy with a token" 200 -H "x-access-token: $TOKEN" "$URL_HAPROXY"
expect "haproxy without a token" 401 "$URL_HAPROXY"
expect "haproxy with a tampered token" 401 -H "x-access-token: $TAMPERED" "$URL_HAPROXY"
NONE_TOKEN="$(printf '{"alg":"none","typ":"JWT"}' | base64 -w0 | tr '+/' '-_' | tr -d '=').${TOKEN#*.}"
NONE_TOKEN=${NONE_TOKEN%.*}.
expect "haproxy with alg none" 401 -H "x-access-token: $NONE_TOKEN" "$URL_HAPROXY"
while (($(date +%s) <= EXPIRED_AT)); do sleep 0.2; done
EXPIRED=$(cat "$W/expired_token.txt")
expect "meiro-gate with an expired token" 401 -H "x-access-token: $EXPIRED" "$URL_GATE"
expect "haproxy with an expired token" 401 -H "x-access-token: $EXPIRED" "$URL_HAPROXY"
log "sanity checks passed (tokens required, tampered/none/expired refused by both verifiers)"

# ---------------------------------------------------------------- measurement helpers
RESULTS=$W/results.tsv   # round contender metric value
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# utime + stime, in clock ticks, of a process and its children (nginx: master + worker).
cpu_ticks() {
  local total=0 p fields
  for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    [[ -r /proc/$p/stat ]] || continue
    read -r -a fields < <(sed 's/^.*) //' "/proc/$p/stat")
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

to_us() { # "1.23ms" -> 1230
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000; else m = -1;
    if (m < 0) print "NaN"; else printf "%.0f", n * m }'
}

# Closed loop: wrk, one thread on the load-generator core. Records rps, p50, p99 and, for a
# proxy, CPU-µs per request from its /proc/<pid>/stat delta over the run.
closed_run() { # round contender url proxy-name(or -) [wrk args…]
  local round=$1 contender=$2 url=$3 proxy=$4
  shift 4
  local before=0 after=0 out
  [[ $proxy != - ]] && before=$(cpu_ticks "${PID[$proxy]}")
  out=$(timeout $((DURATION + 60)) "${PRIO[@]}" taskset -c "$LOADGEN_CPU" \
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url" 2>&1) \
    || die "wrk against $contender failed: $out"
  [[ $proxy != - ]] && after=$(cpu_ticks "${PID[$proxy]}")
  echo "$out" >>"$W/logs/wrk-$contender.log"
  alive origin "${proxy/#-/origin}"
  local requests rps p50 p99 bad
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
  local errors
  errors=$(awk '/Socket errors:/ {print}' <<<"$out")
  [[ -z $bad && -z $errors ]] || die "$contender: errors under load (${bad:+$bad non-2xx }$errors); see $W/logs/wrk-$contender.log"
  [[ -n $requests && $requests -gt 0 ]] || die "$contender: wrk completed no request: $out"
  record "$round" "$contender" rps "$rps"
  record "$round" "$contender" p50_us "$p50"
  record "$round" "$contender" p99_us "$p99"
  record "$round" "$contender" requests "$requests"
  if [[ $proxy != - ]]; then
    local cpu_us
    cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    record "$round" "$contender" cpu_us "$cpu_us"
    log "  $contender: $rps req/s, p50 ${p50} µs, p99 ${p99} µs, $cpu_us CPU-µs/req ($requests requests, $((after - before)) ticks)"
  else
    log "  $contender: $rps req/s, p50 ${p50} µs, p99 ${p99} µs"
  fi
}

# The miss path: a restarted gateway (empty cache) is sent each token exactly once, closed loop
# over as many connections as wrk uses (wrk cannot end a run after N requests: its main thread
# sleeps out -d whatever the script does).
miss_run() { # round
  local round=$1 before after out
  stop gate
  start_gate
  before=$(cpu_ticks "${PID[gate]}")
  out=$(timeout 300 "${PRIO[@]}" taskset -c "$LOADGEN_CPU" "$LOADGEN_BIN" once --url "$URL_GATE" \
    --tokens "$W/miss_tokens.txt" --connections "$CONNECTIONS" 2>&1) || die "loadgen once failed: $out"
  after=$(cpu_ticks "${PID[gate]}")
  echo "$out" >>"$W/logs/loadgen-meiro-miss.log"
  alive origin gate
  [[ $(json_num ok "$out") == "$MISS_TOKENS" ]] || die "meiro-miss: not every token was accepted: $out"
  local cpu_us
  cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$MISS_TOKENS" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  record "$round" meiro-miss rps "$(json_num rps "$out")"
  record "$round" meiro-miss p50_us "$(json_num p50_us "$out")"
  record "$round" meiro-miss p99_us "$(json_num p99_us "$out")"
  record "$round" meiro-miss requests "$MISS_TOKENS"
  record "$round" meiro-miss cpu_us "$cpu_us"
  log "  meiro-miss: $(json_num rps "$out") req/s, p50 $(json_num p50_us "$out") µs, p99 $(json_num p99_us "$out") µs, $cpu_us CPU-µs/req ($MISS_TOKENS requests, $((after - before)) ticks)"
}

json_num() { awk -v k="\"$1\":" '{ i = index($0, k); if (i) { v = substr($0, i + length(k)); sub(/[^0-9.].*/, "", v); print v; exit } }' <<<"$2"; }

# Open loop at a fixed rate: the loadgen example, latencies from each request's due time.
fixed_run() { # round contender url [loadgen args…]
  local round=$1 contender=$2 url=$3
  shift 3
  local out
  out=$(timeout $((FIXED_DURATION + 60)) "${PRIO[@]}" taskset -c "$LOADGEN_CPU" \
    "$LOADGEN_BIN" fixed --url "$url" --rate "$RATE" --duration "$FIXED_DURATION" \
    --connections "$FIXED_CONNECTIONS" "$@" 2>&1) || die "loadgen against $contender failed: $out"
  echo "$out" >>"$W/logs/loadgen-$contender.log"
  [[ $(json_num failures "$out") == 0 && $out == *'"non_2xx":{}'* ]] \
    || die "$contender: errors at the fixed rate: $out"
  record "$round" "$contender" fixed_p50_us "$(json_num p50_us "$out")"
  record "$round" "$contender" fixed_p99_us "$(json_num p99_us "$out")"
  log "  $contender @ $RATE/s: p50 $(json_num p50_us "$out") µs, p99 $(json_num p99_us "$out") µs"
}

median() { # contender metric -> median over rounds, or empty
  awk -F'\t' -v c="$1" -v m="$2" '$2 == c && $3 == m {print $4}' "$RESULTS" | sort -g |
    awk '{v[NR] = $1} END { if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------- warm-up
log "warm-up (2 s per contender, not measured)"
for url in "$URL_DIRECT" "$URL_GATE" "$URL_NGINX" "$URL_HAPROXY"; do
  taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNECTIONS" -d2s -H "x-access-token: $TOKEN" "$url" >/dev/null 2>&1 \
    || die "warm-up against $url failed"
done
alive origin gate nginx haproxy

# ---------------------------------------------------------------- interleaved rounds
STARTED=$(date +%s)
H=(-H "x-access-token: $TOKEN")
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS: closed loop (wrk -t1 -c$CONNECTIONS -d${DURATION}s)"
  closed_run "$round" direct "$URL_DIRECT" - "${H[@]}"
  closed_run "$round" meiro-hit "$URL_GATE" gate "${H[@]}"
  miss_run "$round"
  closed_run "$round" nginx "$URL_NGINX" nginx "${H[@]}"
  closed_run "$round" haproxy "$URL_HAPROXY" haproxy "${H[@]}"
  log "round $round/$ROUNDS: fixed rate ($RATE req/s, $FIXED_CONNECTIONS connections, ${FIXED_DURATION}s + 1 s warm-up)"
  fixed_run "$round" direct "$URL_DIRECT" --header "x-access-token: $TOKEN"
  fixed_run "$round" meiro-hit "$URL_GATE" --header "x-access-token: $TOKEN"
  fixed_run "$round" nginx "$URL_NGINX" --header "x-access-token: $TOKEN"
  fixed_run "$round" haproxy "$URL_HAPROXY" --header "x-access-token: $TOKEN"
done

# ---------------------------------------------------------------- login storm
STORM_LINE=""
if ((STORM)); then
  log "login storm: proxied p99 at $RATE req/s, calm vs. $STORM_RATE logins/s (argon2) on the same gateway"
  login_body="{\"email\":\"$STORM_EMAIL\",\"password\":\"$STORM_PASSWORD\"}"
  expect "meiro-gate login" 200 -X POST -H 'content-type: application/json' -d "$login_body" \
    "http://127.0.0.1:$GATE_PORT/users/login"
  storm_out=""
  for round in $(seq 1 "$ROUNDS"); do
    fixed_run "$round" storm-calm "$URL_GATE" --header "x-access-token: $TOKEN"
    timeout $((FIXED_DURATION + 60)) "${PRIO[@]}" taskset -c "$LOADGEN_CPU" "$LOADGEN_BIN" fixed \
      --url "http://127.0.0.1:$GATE_PORT/users/login" --method POST \
      --header 'content-type: application/json' --body "$login_body" \
      --rate "$STORM_RATE" --duration $((FIXED_DURATION + 1)) --warmup 0 --connections 8 \
      >"$W/storm-$round.json" 2>&1 &
    storm_pid=$!
    PID[storm]=$storm_pid
    sleep 0.5
    fixed_run "$round" storm-storm "$URL_GATE" --header "x-access-token: $TOKEN"
    wait "$storm_pid" || die "the login storm generator failed: $(cat "$W/storm-$round.json")"
    unset 'PID[storm]'
    storm_out=$(cat "$W/storm-$round.json")
    record "$round" storm logins_ok "$(json_num ok "$storm_out")"
    record "$round" storm logins_p99_us "$(json_num p99_us "$storm_out")"
    log "  storm logins: $storm_out"
  done
  alive gate
fi

# ---------------------------------------------------------------- memory
MEM_LINE=""
if ((MEMORY)); then
  log "memory: minting $MEMORY_TOKENS tokens"
  stop gate
  t0=$(date +%s)
  "$MINT_BIN" --config "$W/gate/gate.toml" --count "$MEMORY_TOKENS" --bulk >"$W/mem_tokens.txt" \
    2>>"$W/logs/mint.log" || die "mint_tokens failed: $(tail -n5 "$W/logs/mint.log")"
  log "  minted in $(($(date +%s) - t0)) s; restarting the gateway and presenting each token once"
  start_gate
  rss_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
  rss0=$(rss_kib "${PID[gate]}" VmRSS)
  t0=$(date +%s)
  mem_out=$(taskset -c "$LOADGEN_CPU" "$LOADGEN_BIN" once --url "$URL_GATE" --tokens "$W/mem_tokens.txt" \
    --connections 32 2>&1) || die "loadgen once failed: $mem_out"
  [[ $(json_num ok "$mem_out") == "$MEMORY_TOKENS" ]] || die "not every token was accepted: $mem_out"
  alive gate
  sleep 2
  rss1=$(rss_kib "${PID[gate]}" VmRSS)
  hwm=$(rss_kib "${PID[gate]}" VmHWM)
  MEM_LINE=$(awk -v n="$MEMORY_TOKENS" -v a="$rss0" -v b="$rss1" -v h="$hwm" -v s=$(($(date +%s) - t0)) 'BEGIN {
    printf "RSS with %d distinct valid tokens cached: %.0f MiB (at start %.0f MiB, peak %.0f MiB; %.0f bytes per cached token; sweep took %d s)",
      n, b / 1024, a / 1024, h / 1024, (b - a) * 1024 / n, s }')
  log "  $MEM_LINE"
fi

# ---------------------------------------------------------------- report
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - STARTED))
{
  echo
  echo "meiro-gate load comparison — $(date -u +%Y-%m-%dT%H:%MZ), $(uname -r), $CORES cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
  echo "nginx $NGINX_VERSION, HAProxy $HAPROXY_VERSION, wrk $WRK_VERSION; proxy on core $PROXY_CPU, load generator + origin on core $LOADGEN_CPU"
  echo "medians of $ROUNDS interleaved rounds; closed loop: wrk -t1 -c$CONNECTIONS -d${DURATION}s; fixed rate: $RATE req/s over $FIXED_CONNECTIONS connections"
  echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER$(awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { if (l > 0.5) print "  (machine busy with other work: figures are noisy)" }')"
  echo
  ref_cpu=$(median meiro-hit cpu_us)
  ref_rps=$(median meiro-hit rps)
  direct_fixed=$(median direct fixed_p99_us)
  ref_added=$(awk -v a="$(median meiro-hit fixed_p99_us)" -v d="$direct_fixed" 'BEGIN { print a - d }')
  echo '| contender                                   | CPU-µs/req | × gate |   req/s | × gate | p50 µs | p99 µs | added p99 µs | × gate |'
  echo '|---------------------------------------------|-----------:|-------:|--------:|-------:|-------:|-------:|-------------:|-------:|'
  for c in direct meiro-hit meiro-miss nginx haproxy; do
    case $c in
      direct) label="direct to origin (floor)" ;;
      meiro-hit) label="meiro-gate, token cache hit" ;;
      meiro-miss) label="meiro-gate, $MISS_TOKENS tokens, each a miss" ;;
      nginx) label="nginx $NGINX_VERSION, no auth" ;;
      haproxy) label="HAProxy ${HAPROXY_VERSION%%-*}, jwt_verify ES256" ;;
    esac
    cpu=$(median "$c" cpu_us)
    rps=$(median "$c" rps)
    fixed=$(median "$c" fixed_p99_us)
    awk -v label="$label" -v c="$c" -v cpu="$cpu" -v rps="$rps" -v p50="$(median "$c" p50_us)" -v p99="$(median "$c" p99_us)" \
      -v fixed="$fixed" -v direct="$direct_fixed" -v rcpu="$ref_cpu" -v rrps="$ref_rps" -v radded="$ref_added" 'BEGIN {
        cpus = (cpu == "") ? "—" : sprintf("%.1f", cpu)
        cpur = (cpu == "" || rcpu == 0) ? "—" : sprintf("%.2f", cpu / rcpu)
        rpsr = (rrps == 0) ? "—" : sprintf("%.2f", rps / rrps)
        if (fixed == "" || c == "direct") { added = (c == "direct") ? "0 (floor)" : "—"; addr = "—" }
        else { a = fixed - direct; added = sprintf("%.0f", a); addr = (radded > 0) ? sprintf("%.2f", a / radded) : "—" }
        printf "| %-43s | %10s | %6s | %7.0f | %6s | %6.0f | %6.0f | %12s | %6s |\n", label, cpus, cpur, rps, rpsr, p50, p99, added, addr
      }'
  done
  echo
  echo "CPU-µs/req: utime+stime of the proxy process(es) over the run ÷ requests completed (/proc/<pid>/stat)."
  echo "meiro-miss: a restarted gateway (empty cache) is sent each of $MISS_TOKENS distinct valid tokens exactly once"
  echo "  (loadgen once, $CONNECTIONS connections): every request is ES256 verify + SQLite session and user lookup + cache insert."
  echo "added p99: p99 at $RATE req/s (open loop, from each request's due time) minus the direct p99 at that rate."
  if ((STORM)); then
    calm=$(median storm-calm fixed_p99_us)
    storm=$(median storm-storm fixed_p99_us)
    logins=$(median storm logins_ok)
    awk -v c="$calm" -v s="$storm" -v l="$logins" -v d=$((FIXED_DURATION + 1)) -v r="$STORM_RATE" -v rate="$RATE" 'BEGIN {
      printf "login storm: proxied p99 at %d req/s: calm %.0f µs, during %d logins/s %.0f µs (%.2f×); logins answered 200: %.0f of %d per run\n",
        rate, c, r, s, (c > 0 ? s / c : 0), l, r * d }'
  fi
  [[ -n $MEM_LINE ]] && echo "memory: $MEM_LINE"
  echo
  echo "targets (issue 6):"
  awk -v g="$ref_cpu" -v n="$(median nginx cpu_us)" -v h="$(median haproxy cpu_us)" \
    -v ga="$ref_added" -v na="$(awk -v a="$(median nginx fixed_p99_us)" -v d="$direct_fixed" 'BEGIN { print a - d }')" 'BEGIN {
      printf "  CPU/req vs nginx plain proxy  ≤ 1.00×: %.2f× %s\n", g / n, (g / n <= 1.0 ? "MET" : "MISSED")
      printf "  CPU/req vs HAProxy jwt_verify ≤ 0.70×: %.2f× %s\n", g / h, (g / h <= 0.7 ? "MET" : "MISSED")
      printf "  added p99 ≤ nginx + 200 µs: %.0f µs vs %.0f + 200 µs %s\n", ga, na, (ga <= na + 200 ? "MET" : "MISSED")
    }'
  if ((STORM)); then
    awk -v c="$calm" -v s="$storm" 'BEGIN { printf "  storm p99 ≤ 2× calm p99: %.2f× %s\n", s / c, (s <= 2 * c ? "MET" : "MISSED") }'
  fi
  if ((MEMORY)); then
    awk -v b="$rss1" 'BEGIN { printf "  RSS ≤ 400 MiB at 1 M cached tokens: %.0f MiB %s\n", b / 1024, (b / 1024 <= 400 ? "MET" : "MISSED") }'
  fi
  echo "  (cache-hit validation ≤ 1 µs: see cargo bench --bench token_validation)"
  echo "measured part took ${ELAPSED}s; raw results: $RESULTS$( ((KEEP)) || echo ' (removed; --keep keeps it)')"
} | tee "$W/report.txt"

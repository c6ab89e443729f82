#!/usr/bin/env bash
# Runs each fuzz target for MINUTES (default 5) with libFuzzer through cargo-fuzz, one after
# the other, pinned to one core at nice 19, then merges what it found into the committed
# corpus, minimized. Usage: fuzz/run.sh [MINUTES] [TARGET...]   (default: every target)
#
# Environment: FUZZ_CORE (the core to pin to, default 1), FUZZ_MAX_LEN (input size limit,
# default 4096, 16384 for config_toml), FUZZ_MAX_FILES (corpus files kept per target before
# a coarser re-minimization, default 300), FUZZ_NO_BUILD=1 (use the binaries as built).
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); see fuzz/README.md.
set -uo pipefail
cd "$(dirname "$0")"

minutes="${1:-5}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
core="${FUZZ_CORE:-1}"
max_files="${FUZZ_MAX_FILES:-300}"
pin=(nice -n 19 taskset -c "$core")

# Stable Rust: no sanitizer (the code is `forbid(unsafe_code)`); coverage, value-profile and
# comparison tracing come from the SanitizerCoverage passes cargo-fuzz adds with -C flags.
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  echo "run.sh: building the fuzz targets (cargo fuzz build --sanitizer none)"
  nice -n 19 cargo fuzz build --sanitizer none || exit 1
fi
bin_dir="target/x86_64-unknown-linux-gnu/release"

mkdir -p logs
summary="logs/summary-$(date -u +%Y%m%dT%H%M%SZ).txt"
printf '%-18s %8s %14s %9s %8s %8s %7s  %s\n' target minutes executions exec/s cov ft files result \
  | tee "$summary"

for t in "${targets[@]}"; do
  corpus="corpus/$t"
  case "$t" in
    config_toml) max_len="${FUZZ_MAX_LEN:-16384}" ;; # whole config files
    *) max_len="${FUZZ_MAX_LEN:-4096}" ;;
  esac
  work="$(mktemp -d "${TMPDIR:-/tmp}/meiro-fuzz-$t.XXXXXX")"
  mkdir -p "$corpus" "artifacts/$t"
  dict=()
  [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
  log="logs/$t.log"
  echo "run.sh: $t for $minutes min (log: fuzz/$log)"
  # New inputs go to the scratch directory; the committed corpus is read as a second one.
  "${pin[@]}" "$bin_dir/$t" "$work" "$corpus" "${dict[@]}" \
    -max_total_time=$((minutes * 60)) -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -use_value_profile=1 -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  status=$?
  result=ok
  if [ "$status" -ne 0 ]; then
    result="FAILED(exit $status): $(ls -t "artifacts/$t" 2>/dev/null | head -n1)"
  fi

  # Minimize corpus + finds into a fresh set; the hand-made seeds (seed-*) always stay.
  merged="$(mktemp -d "${TMPDIR:-/tmp}/meiro-fuzz-merged-$t.XXXXXX")"
  "${pin[@]}" "$bin_dir/$t" -merge=1 -max_len="$max_len" -timeout=10 "$merged" "$corpus" "$work" \
    >"logs/$t.merge.log" 2>&1 || echo "run.sh: merge of $t failed (see fuzz/logs/$t.merge.log)"
  if [ "$(find "$merged" -type f | wc -l)" -gt "$max_files" ]; then
    # Too many to commit: keep one input per edge (hit counts no longer count).
    coarse="$(mktemp -d "${TMPDIR:-/tmp}/meiro-fuzz-coarse-$t.XXXXXX")"
    "${pin[@]}" "$bin_dir/$t" -merge=1 -use_counters=0 -max_len="$max_len" -timeout=10 \
      "$coarse" "$merged" >>"logs/$t.merge.log" 2>&1 && { rm -rf "$merged"; merged="$coarse"; }
  fi
  if [ -n "$(ls -A "$merged")" ]; then
    find "$corpus" -type f ! -name 'seed-*' -delete
    for seed in "$corpus"/seed-*; do
      [ -e "$seed" ] && rm -f "$merged/$(sha1sum "$seed" | cut -d' ' -f1)"
    done
    cp "$merged"/* "$corpus"/ 2>/dev/null || true
  fi
  rm -rf "$work" "$merged"

  execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  rate=$(grep -ao 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  last=$(grep -aE '^#[0-9]+' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
  files=$(find "$corpus" -type f | wc -l)
  printf '%-18s %8s %14s %9s %8s %8s %7s  %s\n' "$t" "$minutes" "${execs:-?}" "${rate:-?}" \
    "${cov:-?}" "${ft:-?}" "$files" "$result" | tee -a "$summary"
done
echo "run.sh: summary in fuzz/$summary; corpora in fuzz/corpus/ (commit them); crashes in fuzz/artifacts/"

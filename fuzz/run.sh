#!/usr/bin/env bash
# fuzz/run.sh — runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS each, default 20)
# from the committed seed corpus (fuzz/corpus/<target>), with the installed nightly. Installs
# cargo-fuzz if missing. A crash, a panic or a leak fails the run (exit non-zero) and leaves its
# input in the artifacts directory it names. Prints each target's executions and time.
#
#   fuzz/run.sh                 every target
#   fuzz/run.sh cursor query    some of them
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../deploy/local/lib.sh
source deploy/local/lib.sh

SECONDS_EACH="${FUZZ_SECONDS:-20}"
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(record_decoder cursor client_frame query)

rustup toolchain list | grep -q '^nightly' || die "the nightly toolchain is needed (rustup toolchain install nightly)"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked >/dev/null
fi
[[ -d fuzz/corpus/record_decoder ]] || cargo run -q -p dashstream-gateway --example fuzz_seeds

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "building the fuzz targets (nightly; no sanitizer: the targets are safe Rust, and librdkafka does not build under ASan flags)"
cargo +nightly fuzz build --sanitizer none >/dev/null 2>"$work/build.log" ||
  { tail -30 "$work/build.log"; die "the fuzz targets did not build"; }
summary=()
for t in "${TARGETS[@]}"; do
  # A working copy of the seeds: what the fuzzer adds stays out of the repository.
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  cp fuzz/corpus/"$t"/* "$work/corpus/$t/"
  log "fuzzing $t for ${SECONDS_EACH}s"
  if ! cargo +nightly fuzz run --sanitizer none "$t" "$work/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="$work/artifacts/$t/" >"$work/$t.log" 2>&1; then
    tail -40 "$work/$t.log"
    mkdir -p target/fuzz-artifacts
    cp -r "$work/artifacts/$t" target/fuzz-artifacts/ 2>/dev/null || true
    die "fuzz target $t failed; its input is in target/fuzz-artifacts/$t"
  fi
  done_line="$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$work/$t.log" | tail -1)"
  summary+=("$t: ${done_line:-no summary line}")
done
log "fuzzing passed:"
printf '  %s\n' "${summary[@]}"

#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for RUNS executions each, one
# after the other, and prints executions, exec/s and coverage per target.
# Exits non-zero if any target crashes; the input is saved under
# fuzz/artifacts/<target>/ and the full log under fuzz/target/logs/.
#
#   fuzz/run.sh               # 1,000,000 executions per target
#   fuzz/run.sh 10000         # smoke run
#   fuzz/run.sh 200000 decompress server_conn
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
# clang, if installed, instruments zstd's C code as well.
# The committed corpus fuzz/corpus/<target>/ is read, not written: inputs
# that reach new coverage go to fuzz/target/corpus/<target>/ (see
# fuzz/README.md for folding them into the committed corpus).
set -uo pipefail
cd "$(dirname "$0")"

runs=${1:-1000000}
[[ $runs =~ ^[0-9]+$ ]] || { echo "usage: $0 [RUNS] [TARGET...]" >&2; exit 2; }
shift $(($# > 0 ? 1 : 0))
if (($# > 0)); then
    targets=("$@")
else
    targets=(ws_decoder ws_handshake frame_stream decompress server_conn)
fi

# Coverage of zstd's C code guides the `decompress` target only if that code
# is instrumented too; clang can do it (gcc cannot), so use it when present.
if command -v clang >/dev/null; then
    export CC=clang CFLAGS="-fsanitize=fuzzer-no-link"
else
    echo "note: no clang; zstd's C code runs without coverage feedback" >&2
fi

logs=target/logs
mkdir -p "$logs"
for t in "${targets[@]}"; do
    cargo +nightly fuzz build "$t" || exit 1
done

failed=()
printf '%-14s %12s %10s %8s %8s  %s\n' target executions exec/s cov ft result
for t in "${targets[@]}"; do
    log=$logs/$t.log
    mkdir -p "target/corpus/$t"
    # New finds go to target/corpus/<target>/; the committed corpus is only read.
    if cargo +nightly fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
        -runs="$runs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log)"
        failed+=("$t")
    fi
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    speed=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log")
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    printf '%-14s %12s %10s %8s %8s  %s\n' "$t" "${execs:--}" "${speed:--}" "${cov:--}" "${ft:--}" "$result"
done

if ((${#failed[@]})); then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi

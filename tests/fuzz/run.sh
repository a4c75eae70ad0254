#!/bin/bash
# Run every libFuzzer target of <dir> (default build/fuzz) for FUZZ_SECONDS each (default 10) over
# its seed corpus tests/fuzz/corpus/<name>/ plus the inputs earlier runs found
# (<dir>/corpus/<name>/, which also receives new ones), FUZZ_JOBS targets at a time (default 1;
# `make test` runs two, one per core). Extra arguments name targets to run (e.g. "pp config");
# default: all. Prints one line per target once all are done (inputs tried, executions/s,
# coverage, corpus size) and exits 1 if any target crashed, leaked, timed out or broke an
# invariant: the input that did it is kept as <dir>/artifacts/<name>-crash-* (copy it into the
# seed corpus once the bug is fixed), the log is <dir>/logs/<name>.log.
set -u
here=$(cd "$(dirname "$0")" && pwd)

# One target: run it, write its summary line to <dir>/logs/<name>.result, exit with its status.
if [ "${1:-}" = "--one" ]; then
    dir=$2
    t=$3
    secs=${FUZZ_SECONDS:-10}
    bin="$dir/fuzz_$t"
    seeds="$here/corpus/$t"
    work="$dir/corpus/$t"
    log="$dir/logs/$t.log"
    res="$dir/logs/$t.result"
    mkdir -p "$work" "$seeds"
    dict=()
    [ -f "$here/$t.dict" ] && dict=(-dict="$here/$t.dict")
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
    LSAN_OPTIONS=suppressions=$here/lsan.supp \
        "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$dir/artifacts/$t-" "${dict[@]}" \
        "$work" "$seeds" > "$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
    corp=$(ls "$work" | wc -l)
    if [ $rc -ne 0 ]; then
        {
            echo "fuzz $t: FAILED (exit $rc) after ${execs:-?} inputs; log $log:"
            grep -E "ERROR|invariant|SUMMARY|Test unit written|runtime error|#[0-9]+ 0x" "$log" |
                head -30
        } > "$res"
    else
        echo "fuzz $t: ok, ${execs:-?} inputs in ${secs}s (${rate:-?}/s, ${cov:-cov: ?}," \
            "corpus $corp files), 0 crashes" > "$res"
    fi
    exit $rc
fi

dir=${1:-build/fuzz}
shift || true
jobs=${FUZZ_JOBS:-1}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for b in "$dir"/fuzz_*; do
        case "$b" in *.d) continue ;; esac
        [ -x "$b" ] && targets+=("$(basename "$b" | sed 's/^fuzz_//')")
    done
fi
mkdir -p "$dir/artifacts" "$dir/logs"
for t in "${targets[@]}"; do
    rm -f "$dir/logs/$t.result"
done
echo "fuzz: ${#targets[@]} targets, ${FUZZ_SECONDS:-10}s each, $jobs at a time"
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash "$0" --one "$dir" {}
npass=0
nfail=0
for t in "${targets[@]}"; do
    res="$dir/logs/$t.result"
    if [ -s "$res" ] && grep -q "^fuzz $t: ok" "$res"; then
        npass=$((npass + 1))
    else
        nfail=$((nfail + 1))
        [ -s "$res" ] || echo "fuzz $t: FAILED (no result; log $dir/logs/$t.log)" > "$res"
    fi
    cat "$res"
done
echo "fuzz: $npass passed, $nfail failed"
[ $nfail -eq 0 ]

#!/bin/bash
# Run every libFuzzer target of <dir> (default build/fuzz) for FUZZ_SECONDS each (default 10) over
# its seed corpus tests/fuzz/corpus/<name>/ plus the inputs earlier runs found
# (<dir>/corpus/<name>/, which also receives new ones). Extra arguments name targets to run
# (e.g. "pp config"); default: all. Prints one line per target (inputs tried, corpus size) and
# exits 1 if any target crashed, leaked, timed out or broke an invariant: the input that did it
# is kept as <dir>/artifacts/<name>-crash-* (copy it into the seed corpus once the bug is fixed).
set -u
dir=${1:-build/fuzz}
shift || true
secs=${FUZZ_SECONDS:-10}
here=$(cd "$(dirname "$0")" && pwd)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for b in "$dir"/fuzz_*; do
        case "$b" in *.d) continue ;; esac
        [ -x "$b" ] && targets+=("$(basename "$b" | sed 's/^fuzz_//')")
    done
fi
mkdir -p "$dir/artifacts" "$dir/logs"
fail=0
npass=0
nfail=0
for t in "${targets[@]}"; do
    bin="$dir/fuzz_$t"
    seeds="$here/corpus/$t"
    work="$dir/corpus/$t"
    log="$dir/logs/$t.log"
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
    corp=$(ls "$work" | wc -l)
    if [ $rc -ne 0 ]; then
        echo "fuzz $t: FAILED (exit $rc) after ${execs:-?} inputs; log $log:"
        grep -E "ERROR|invariant|SUMMARY|Test unit written|runtime error|#[0-9]+ 0x" "$log" | head -30
        fail=1
        nfail=$((nfail + 1))
    else
        echo "fuzz $t: ok, ${execs:-?} inputs in ${secs}s, 0 crashes (found corpus $corp files)"
        npass=$((npass + 1))
    fi
done
echo "fuzz: $npass passed, $nfail failed"
exit $fail

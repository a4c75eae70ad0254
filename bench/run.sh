#!/usr/bin/env bash
# Benchmark harness entry point (issue 3): dispatcher vs nginx vs HAProxy on loopback.
# `make bench` installs nginx, haproxy and wrk, builds bin/, then runs this script; it can also be
# run by hand once those are in place. All knobs are environment variables, see bench/bench.py.
# Writes bench/RESULTS.md and prints the same table.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# 10,000 idle client connections plus the proxy's own: raise the open-file limit as far as allowed.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard"

# bench.py stops every process it started (atexit + signal handlers); this trap is the backstop
# for the python process itself being killed: it ends the process groups bench.py started.
py_pid=
cleanup() {
    if [ -n "$py_pid" ] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        wait "$py_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Scenario (k), rate_limit on the hot path, is bench/bench_rl.py, (m), gRPC unary calls, is
# bench/bench_grpc.py, and (n), HTTP/2 against h2o, is bench/bench_h2o.py (each with its own
# results file); they run after the others when BENCH_ONLY is unset or names them.
if [ -z "${BENCH_ONLY:-}" ]; then
    only=",k,m,n,"
    rest=
    python3 "$here/bench.py" "$@" &
    py_pid=$!
    wait "$py_pid"
else
    only=",$BENCH_ONLY,"
    rest=$(printf '%s' "$only" | tr ',' '\n' | grep -v -x -e k -e m -e n -e '' | paste -sd, - || true)
fi
if [ -n "$rest" ]; then
    BENCH_ONLY="$rest" python3 "$here/bench.py" "$@" &
    py_pid=$!
    wait "$py_pid"
fi
if [[ "$only" == *",k,"* ]]; then
    python3 "$here/bench_rl.py" &
    py_pid=$!
    wait "$py_pid"
fi
if [[ "$only" == *",m,"* ]]; then
    python3 "$here/bench_grpc.py" &
    py_pid=$!
    wait "$py_pid"
fi
if [[ "$only" == *",n,"* ]]; then
    python3 "$here/bench_h2o.py" &
    py_pid=$!
    wait "$py_pid"
fi

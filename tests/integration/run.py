#!/usr/bin/env python3
"""Runs the dispatcher integration tests (tests/integration/test_*.py).

    DSP_BIN=<dir holding dispatcher-master> DSP_TESTBACKEND=<dsp-testbackend> \\
        python3 tests/integration/run.py [-v] [-l] [FILTER ...]

-j N (or DSP_TEST_JOBS) runs N tests at a time (default 3); modules that set DSP_SERIAL = True
run one test at a time afterwards. FILTER selects tests whose id (module.Class.test) contains it. Every test runs in a child
process of its own, in a new session, under a time limit (60 s unless the test says otherwise
with @dsptest.timeout, doubled for the sanitizer build); when the test ends, whatever it started
(masters, workers, backends) is killed even if it failed or hung. Prints one line per test, the
output of failing tests, and last a line "N passed, M failed". Exit status 0 when all passed.
The temp dirs (config, error.log, access.log) of failed tests are kept and named in the output;
DSP_KEEP_TMP=1 keeps all of them. -v also shows the output of passing tests; -l lists tests.
"""

import concurrent.futures
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
# Listening ports for tests (split between the tests that run at once); the kernel hands out
# outgoing local ports from 32768 up (net.ipv4.ip_local_port_range).
PORT_LO, PORT_HI = 20000, 32000
sys.path.insert(0, HERE)

import dsptest  # noqa: E402


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def discover():
    """All tests, and (id, error) for modules that failed to import."""
    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests, broken = [], []
    for t in iter_tests(suite):
        if t.id().startswith("unittest.loader"):
            try:
                t.debug()  # the loader's placeholder re-raises the import error
            except Exception as e:  # noqa: BLE001
                broken.append((t.id(), "%s: %s" % (type(e).__name__, e)))
        else:
            tests.append(t)
    return tests, broken


def test_timeout(test):
    fn = getattr(test, test._testMethodName)
    base = getattr(fn, "dsp_timeout", 60)
    return base * (2 if dsptest.SANITIZED else 1)


def run_child(test_id):
    """Child mode: run one test, print its failure, exit 0 (pass) or 1 (fail)."""
    suite = unittest.TestLoader().loadTestsFromName(test_id)
    result = unittest.TestResult()
    suite.run(result)
    problems = result.errors + result.failures + [
        (t, "unexpected success") for t in result.unexpectedSuccesses]
    for t, tb in problems:
        print("== %s" % t)
        print(tb.rstrip())
    if problems:
        for d in dsptest.STARTED:
            print("--- dispatcher on port %d (files in %s), error log tail:" % (d.port, d.tmp))
            print(d.log_tail(60))
    sys.stdout.flush()
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


def read_record(path):
    """The pids and temp dirs a test recorded (see dsptest._record_pid/_record_tmp)."""
    pids, tmps = [], []
    try:
        with open(path) as f:
            for line in f:
                kind, _, val = line.strip().partition(" ")
                if kind == "pid" and val.isdigit():
                    pids.append(int(val))
                elif kind == "tmp":
                    tmps.append(val)
    except OSError:
        pass
    return pids, tmps


def kill_leftovers(pgid, record):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in read_record(record)[0]:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"dispatcher" in cmd or b"dsp-testbackend" in cmd:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def log_tails(record, n=40):
    out = []
    for tmp in read_record(record)[1]:
        path = os.path.join(tmp, "error.log")
        try:
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        out.append("--- %s (last %d lines):" % (path, n))
        out += lines[-n:]
    return "\n".join(out) + "\n"


def remove_tmps(record):
    for tmp in read_record(record)[1]:
        if os.path.basename(tmp).startswith("dsp-it-"):
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv):
    if len(argv) >= 2 and argv[0] == "--child":
        return run_child(argv[1])

    verbose = "-v" in argv
    list_only = "-l" in argv
    jobs = int(os.environ.get("DSP_TEST_JOBS", "3"))
    rest = []
    it = iter(argv)
    for a in it:
        if a == "-j":
            jobs = int(next(it, "1"))
        elif a.startswith("-j") and a[2:].isdigit():
            jobs = int(a[2:])
        elif a not in ("-v", "-l"):
            rest.append(a)
    filters = rest

    print("dispatcher integration tests: master %s%s, backend %s" % (
        dsptest.MASTER, " (sanitizer build)" if dsptest.SANITIZED else "", dsptest.TESTBACKEND))
    tests, broken = discover()
    tests = [t for t in tests if not filters or any(f in t.id() for f in filters)]
    if list_only:
        for t in tests:
            print(t.id())
        return 0
    missing = [p for p in (dsptest.MASTER, dsptest.TESTBACKEND) if not os.access(p, os.X_OK)]
    if missing:
        print("missing executables: %s" % ", ".join(missing))

    passed, failed = 0, []
    started = time.monotonic()
    for tid, err in broken:
        failed.append(tid)
        print("FAIL  %-68s (cannot import)" % tid)
        print("\n".join("    | " + l for l in err.splitlines()), flush=True)
    # Each test running at the same time gets its own range of listening ports, below the
    # kernel's ephemeral range: a port picked by one test can then be neither picked by another
    # (two SO_REUSEPORT listeners would share its connections) nor taken meanwhile as the local
    # port of some test's outgoing connection.
    slots = queue.Queue()
    nslots = max(1, jobs)
    for i in range(nslots):
        slots.put(i)
    span = (PORT_HI - PORT_LO) // nslots

    def run_one(t):
        slot = slots.get()
        try:
            return run_in_slot(t, slot)
        finally:
            slots.put(slot)

    def run_in_slot(t, slot):
        tid = t.id()
        limit = test_timeout(t)
        fd, pid_log = tempfile.mkstemp(prefix="dsp-it-pids-")
        os.close(fd)
        lo = PORT_LO + slot * span
        env = dict(os.environ, DSP_PID_LOG=pid_log, PYTHONUNBUFFERED="1",
                   DSP_PORT_RANGE="%d-%d" % (lo, lo + span - 1))
        t0 = time.monotonic()
        if missing:
            out, rc = "missing executables: %s\n" % ", ".join(missing), 1
        else:
            child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", tid],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                     cwd=HERE)
            try:
                out, _ = child.communicate(timeout=limit)
                rc = child.returncode
            except subprocess.TimeoutExpired:
                kill_leftovers(child.pid, pid_log)
                out, _ = child.communicate()
                out += b"\nTIMEOUT: killed after %ds\n" % limit
                out += log_tails(pid_log).encode()
                rc = -1
            except BaseException:
                kill_leftovers(child.pid, pid_log)
                child.wait()
                raise
            finally:
                kill_leftovers(child.pid, pid_log)
            out = out.decode("utf-8", "replace")
        if rc == 0 and not os.environ.get("DSP_KEEP_TMP"):
            remove_tmps(pid_log)
        os.unlink(pid_log)
        return tid, rc, out, time.monotonic() - t0

    def report(res):
        nonlocal passed
        tid, rc, out, dt = res
        with lock:
            if rc == 0:
                passed += 1
                print("PASS  %-68s %6.2fs" % (tid, dt), flush=True)
                if verbose and out.strip():
                    print("\n".join("    | " + l for l in out.rstrip().splitlines()))
            else:
                failed.append(tid)
                print("FAIL  %-68s %6.2fs" % (tid, dt), flush=True)
                print("\n".join("    | " + l for l in out.rstrip().splitlines()), flush=True)

    # Tests whose module sets DSP_SERIAL = True (timing assertions, CPU-heavy streams) run one
    # at a time after the others, which run <jobs> at a time.
    lock = threading.Lock()
    serial = [t for t in tests if getattr(sys.modules.get(type(t).__module__), "DSP_SERIAL",
                                          False)]
    parallel = [t for t in tests if t not in serial]
    if jobs > 1 and len(parallel) > 1:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
            for res in ex.map(run_one, parallel):
                report(res)
    else:
        for t in parallel:
            report(run_one(t))
    for t in serial:
        report(run_one(t))
    print("ran %d tests in %.1fs" % (len(tests), time.monotonic() - started))
    for tid in failed:
        print("failed: %s" % tid)
    print("%d passed, %d failed" % (passed, len(failed)), flush=True)
    return 1 if failed or not (tests or broken) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

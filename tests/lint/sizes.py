#!/usr/bin/env python3
"""The worker's shape, checked: no file in worker/ over MAX_FILE lines and no function there over
MAX_FN lines (issue 13: a layer that grows past this is two layers). Prints the offenders and exits
1; run by `make test` (and `make lint`)."""

import glob
import os
import re
import sys

MAX_FILE = 1200
MAX_FN = 120
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FN_START = re.compile(r"^[A-Za-z_].*\(")


def functions(lines):
    """(head line, body length) of each top-level function: a line at column 0 that opens a
    parameter list, then "{" alone at column 0 (before any line ending in ";") and the "}" at
    column 0 that closes it."""
    i = 0
    while i < len(lines):
        if FN_START.match(lines[i]) and not lines[i].rstrip().endswith((";", ",")):
            j = i
            while j < len(lines) and lines[j] != "{" and not lines[j].rstrip().endswith(";"):
                j += 1
            if j < len(lines) and lines[j] == "{":
                k = j
                while k < len(lines) and lines[k] != "}":
                    k += 1
                yield lines[i], k - j - 1
                i = k
        i += 1


def main():
    bad = []
    for path in sorted(glob.glob(os.path.join(ROOT, "worker", "*.[ch]"))):
        lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
        rel = os.path.relpath(path, ROOT)
        if len(lines) > MAX_FILE:
            bad.append("%s: %d lines (at most %d)" % (rel, len(lines), MAX_FILE))
        for head, n in functions(lines):
            if n > MAX_FN:
                bad.append("%s: %s... is %d lines (at most %d)" % (rel, head[:60], n, MAX_FN))
    for b in bad:
        print("sizes: " + b)
    print("sizes: worker/ files and functions within %d / %d lines: %s"
          % (MAX_FILE, MAX_FN, "no" if bad else "yes"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

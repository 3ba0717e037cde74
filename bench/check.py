#!/usr/bin/env python3
"""`make bench-check`: instructions per operation, counted by valgrind's
callgrind (repeatable on a noisy machine, unlike a clock), of an in-process
call, an in-process emit -> delivery and a trie match, compared with the
committed baseline `bench/callgrind-baseline.json`. Fails when one costs
more than 5 % over its baseline.

Each operation runs under callgrind (`kernel-bench count OP --iters N`, on
one thread) at two counts; the difference of the totals over the
difference of the counts is one operation's instructions, with setup and
teardown cancelled. Three such pairs, and their median.

    bench/check.py BIN            check against the baseline
    bench/check.py BIN --update   write the measured figures as the baseline
"""

import json
import os
import re
import subprocess
import sys

BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callgrind-baseline.json")
TOLERANCE = 0.05
# (operation, smaller count, larger count)
# The counts are far apart so that the setup, which varies by a few million
# instructions from one process to the next (quanta times its clock at
# start, slowed by valgrind), is a small share of the difference.
OPS = [("call", 2_000, 42_000), ("emit", 2_000, 42_000), ("trie", 20_000, 420_000)]


def instructions(binary: str, op: str, iters: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         binary, "count", op, "--iters", str(iters)],
        env={**os.environ, "BENCH_THREADS": "1"},
        capture_output=True, text=True, check=False)
    found = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if out.returncode != 0 or not found:
        sys.exit(f"callgrind run of `{op}` failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return int(found.group(1))


def measure(binary: str) -> dict[str, float]:
    """The median of three measurements per operation, against a process
    whose setup happened to cost more or less than usual."""
    figures = {}
    for op, small, large in OPS:
        runs = sorted(
            (instructions(binary, op, large) - instructions(binary, op, small)) / (large - small)
            for _ in range(3))
        figures[op] = round(runs[1], 1)
        print(f"  {op}: {runs[1]:,.0f} instructions per operation "
              f"(runs: {', '.join(f'{r:,.0f}' for r in runs)})", flush=True)
    return figures


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary, update = sys.argv[1], "--update" in sys.argv[2:]
    figures = measure(binary)
    if update:
        with open(BASELINE, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")
        print(f"baseline written: {BASELINE}")
        return 0
    with open(BASELINE) as f:
        baseline = json.load(f)
    failed = []
    for op, now in figures.items():
        base = baseline.get(op)
        if base is None:
            failed.append(f"{op}: no baseline (run `make bench-baseline`)")
            continue
        change = now / base - 1
        verdict = "REGRESSION" if change > TOLERANCE else "ok"
        print(f"{op:>5}: {now:>10,.0f} vs baseline {base:>10,.0f}  ({change:+.1%})  {verdict}")
        if change > TOLERANCE:
            failed.append(f"{op}: {now:,.0f} instructions, {change:+.1%} over the baseline {base:,.0f}")
    if failed:
        print("bench-check failed (over 5 % above the baseline):\n  " + "\n  ".join(failed))
        return 1
    print("bench-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

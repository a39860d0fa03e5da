"""Long runs stay bounded: one window of 10^4 to 10^7 ``meter.step()`` marks. Prints each goal with PASS/FAIL.

Goals (issue #15):
- the process's peak memory (RSS) grows by the same amount at every step count, from 10^4 to the largest:
  at most 2 MB more than at 10^4 (per-step values are folded into a bounded quantile sketch);
- the window ends (its record built and stored) in under 50 ms at the largest step count (10^7 by default);
- the stored record stays the same size: the window's JSON and the store file at most 16 KB larger than at
  10^4 steps;
- p50, p95 and p99 of the step durations are within the sketch's stated relative error
  (``latency.relative_error``) of the exact nearest-rank values.

Each figure comes from a fresh child process (so one step count's memory does not hide another's), with the
estimate backends and a run store in a temporary folder. The exact percentiles come from a second child: an
outer window that keeps every step (``keep_steps=True``) around the same marks as a sketched inner window,
whose exact durations are the outer's, its first one measured from its own start. One more child times the
same window with every step kept, for reference (no goal).

Run: ``python benchmarks/long_run.py`` (``--max-steps 1000000`` to stop at 10^6; 10^7 takes a few minutes and
~2 GB of memory for the exact reference).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

RESULTS: list[tuple[str, str, bool]] = []
MEMORY_SLACK_B = 2 * 1024 * 1024
STORED_SLACK_B = 16 * 1024
END_LIMIT_S = 0.050


def goal(name: str, figure: str, ok: bool) -> None:
    RESULTS.append((name, figure, ok))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {figure}", flush=True)


def _peak_rss_b() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child_cost(steps: int, keep_all: bool) -> dict[str, float]:
    """In a fresh process: the peak-RSS growth, the window's end time and its stored size for ``steps`` marks."""
    import greenmeter
    from greenmeter.store.database import Store

    folder = tempfile.mkdtemp(prefix="greenmeter-long-run-")
    path = os.path.join(folder, "runs.db")
    meter = greenmeter.Meter(["cpu-estimate", "ram-estimate"], sync=None, store=path, keep_steps=keep_all or 1000)
    with meter.window("warm-up"):  # imports, the store's first write, the allocator's first arenas
        for _ in range(10_000):
            meter.step(32)
    before = _peak_rss_b()
    step = meter.step
    w = meter.begin("train")
    t_loop = time.perf_counter()
    for _ in range(steps):
        step(32)
    loop_s = time.perf_counter() - t_loop
    t_end = time.perf_counter()
    m = meter.end(w)
    end_s = time.perf_counter() - t_end
    grown = _peak_rss_b() - before
    run_id = meter.run_id
    meter.close()
    with Store(path) as store:
        stored_json = len(store.windows(run_id)[-1].to_json())
    return {"rss_growth_b": grown, "end_s": end_s, "loop_s": loop_s, "json_b": stored_json,
            "db_b": os.path.getsize(path), "steps": m.steps, "samples": m.samples or 0}


def child_accuracy(steps: int) -> dict[str, float]:
    """In a fresh process: a sketched window's p50/p95/p99 against the exact ones of the same marks."""
    import greenmeter
    from greenmeter.stats import percentile

    meter = greenmeter.Meter(["cpu-estimate"], sync=None, keep_steps=1000)
    outer = meter.begin("exact", keep_steps=True)
    inner = meter.begin("sketched")
    step = meter.step
    for _ in range(steps):
        step(32)
    sketched = meter.end(inner)
    exact = meter.end(outer)
    durations = list(exact.step_durations_s)
    first_mark = outer.t0 + durations[0]
    durations[0] = first_mark - inner.t0  # the inner window's first step runs from its own start
    lat = sketched.latency
    assert lat is not None and sketched.step_sketch is not None and not sketched.step_durations_s
    out: dict[str, float] = {"relative_error": lat.relative_error, "steps": sketched.steps}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        out[name] = getattr(lat, f"{name}_s")
        out[f"{name}_exact"] = percentile(durations, q)
    return out


def in_child(kind: str, steps: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(steps)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=10_000_000, help="the largest step count (default 10^7)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, steps = args.child[0], int(args.child[1])
        if kind == "accuracy":
            result = child_accuracy(steps)
        else:
            result = child_cost(steps, keep_all=kind == "kept")
        print(json.dumps(result))
        return 0

    counts = [n for n in (10_000, 100_000, 1_000_000, 10_000_000) if n <= args.max_steps]
    load = os.getloadavg()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f}; "
          f"step counts {', '.join(f'{n:,}' for n in counts)}", flush=True)
    print(f"{'steps':>12}  {'RSS growth':>11}  {'loop':>8}  {'per step':>9}  {'end':>9}  {'JSON':>9}  {'store':>9}",
          flush=True)
    costs = {}
    for n in counts:
        c = costs[n] = in_child("cost", n)
        print(f"{n:>12,}  {c['rss_growth_b'] / 2**20:>8.2f} MB  {c['loop_s']:>6.2f} s  "
              f"{c['loop_s'] / n * 1e6:>6.3f} us  {c['end_s'] * 1e3:>6.2f} ms  {c['json_b'] / 1024:>6.1f} KB  "
              f"{c['db_b'] / 1024:>6.1f} KB", flush=True)
    first, last = costs[counts[0]], costs[counts[-1]]
    worst = max(costs.values(), key=lambda c: c["rss_growth_b"])
    goal(f"peak RSS growth flat from {counts[0]:,} to {counts[-1]:,} steps (at most +2 MB over {counts[0]:,})",
         f"{first['rss_growth_b'] / 2**20:.2f} MB at {counts[0]:,}, at most {worst['rss_growth_b'] / 2**20:.2f} MB",
         all(c["rss_growth_b"] <= first["rss_growth_b"] + MEMORY_SLACK_B for c in costs.values()))
    goal(f"window end at {counts[-1]:,} steps, record stored (under 50 ms)", f"{last['end_s'] * 1e3:.2f} ms",
         last["end_s"] < END_LIMIT_S)
    for key, what in (("json_b", "stored window JSON"), ("db_b", "store file")):
        biggest = max(c[key] for c in costs.values())
        goal(f"{what} flat from {counts[0]:,} to {counts[-1]:,} steps (at most +16 KB over {counts[0]:,})",
             f"{first[key] / 1024:.1f} KB at {counts[0]:,}, at most {biggest / 1024:.1f} KB",
             all(c[key] <= first[key] + STORED_SLACK_B for c in costs.values()))

    for n in counts:
        a = in_child("accuracy", n)
        bound = a["relative_error"]
        errors = {name: abs(a[name] - a[f"{name}_exact"]) / a[f"{name}_exact"] for name in ("p50", "p95", "p99")}
        figure = ", ".join(f"{name} {a[name] * 1e9:.1f} ns vs exact {a[f'{name}_exact'] * 1e9:.1f} ns "
                           f"({errors[name]:.2%})" for name in errors)
        goal(f"p50/p95/p99 at {n:,} steps within the stated {bound:.1%} of exact", figure,
             all(e <= bound * (1 + 1e-9) for e in errors.values()))

    n = min(1_000_000, counts[-1])
    kept = in_child("kept", n)
    print(f"reference, keep_steps=True (every step kept, the opt-in), {n:,} steps: RSS growth "
          f"{kept['rss_growth_b'] / 2**20:.1f} MB, end {kept['end_s'] * 1e3:.0f} ms, stored JSON "
          f"{kept['json_b'] / 2**20:.1f} MB, store file {kept['db_b'] / 2**20:.1f} MB", flush=True)

    failed = [name for name, _, ok in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} goals met" + (f"; missed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

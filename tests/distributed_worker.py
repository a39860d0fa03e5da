"""One rank of the distributed tests: real CPU work in a measured window, then ``aggregate()``.

Run by ``torchrun`` (or with the torchrun variables set by hand) on every rank::

    python tests/distributed_worker.py --store runs.db --out results/ [--init] [--fail-rank 3] [--timeout 5]

Each rank writes ``<out>/rank<r>.json``: its own run id, how ``aggregate()`` ended (``"ok"`` or
``"AggregationError"``) and how long it took in seconds; rank 0 also writes ``<out>/result.json``, the
:class:`~greenmeter.metering.distributed.DistributedResult`. ``--init`` initialises a gloo process group first, meets at a barrier
before the window and all-reduces a tensor every step, as data-parallel training does; without it ``aggregate()`` initialises
torch.distributed itself. ``--fail-rank`` makes that rank raise at the end of its window, before it
aggregates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from greenmeter.metering.distributed import AggregationError, rank_meter


def _burn(seconds: float) -> int:
    """Busy CPU work for ``seconds`` of this process's CPU time; returns the loop count."""
    end = time.process_time() + seconds
    count = 0
    while time.process_time() < end:
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-s", type=float, default=0.1, help="CPU seconds of work per step")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--init", action="store_true")
    parser.add_argument("--fail-rank", type=int, default=-1)
    args = parser.parse_args(argv)
    out = Path(args.out)
    meter = rank_meter(store=args.store, name="distributed-test", sync=None)
    info = meter.rank
    dist = None
    if args.init:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    meter.start()  # probe the sources before the window, so every rank begins it at about the same time
    if dist is not None:
        dist.barrier()  # as DDP's start-up broadcast does: the ranks enter the training loop together
    with meter.window("train", samples=args.steps * 8) as w:
        for _ in range(args.steps):
            _burn(args.step_s)
            if dist is not None:
                grad = torch.ones(1000)
                dist.all_reduce(grad)  # every rank waits here, as data-parallel training does each step
            meter.step(8)
        if info.rank == args.fail_rank:
            raise RuntimeError(f"injected failure on rank {info.rank}")
    report = {"rank": info.to_dict(), "run_id": meter.run_id, "energy_j": w.measurement.energy_j}
    started = time.monotonic()
    try:
        result = meter.aggregate(timeout_s=args.timeout)
        report["aggregate"] = "ok"
    except AggregationError as err:
        result = None
        report.update(aggregate="AggregationError", error=str(err))
    report["aggregate_s"] = time.monotonic() - started
    (out / f"rank{info.rank}.json").write_text(json.dumps(report))
    if result is not None:
        (out / "result.json").write_text(result.to_json())
        print(result.summary())
    if dist is not None and dist.is_initialized():
        dist.destroy_process_group()
    return 0 if report["aggregate"] == "ok" else 3


if __name__ == "__main__":
    sys.exit(main())

"""How well `greenmeter calibrate` recovers known coefficients from synthetic meter logs, over many trials.

Each trial stores synthetic windows (tests/calibration/synthetic.py: idle 85 W, 11 W per busy CPU, 3 W/GB), writes
the meter's log of them with a random clock offset (within +-110 s), a random sample interval and noise, and fits
it; the worst relative error of each coefficient, the trials over 5%, and the worst offset error in sample
intervals are printed. docs/calibration.md quotes its output.

    python benchmarks/calibration_robustness.py
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenmeter.calibration import activity_of, align, read_meter_log  # noqa: E402
from tests.calibration import synthetic  # noqa: E402

TRUE = {"idle": 85.0, "cpu": 11.0, "gb": 3.0}


def trials(n_windows: int, noise: float, intervals: tuple[float, ...], folder: Path, count: int = 30) -> str:
    errors: dict[str, list[float]] = {"idle": [], "cpu": [], "gb": [], "offset": []}
    for seed in range(count):
        rng = random.Random(seed)
        offset, interval = rng.uniform(-110, 110), rng.choice(intervals)
        loads = synthetic.loads(n_windows, seed=seed)
        activities = [activity_of(synthetic.window(load)) for load in loads]
        samples = synthetic.meter_samples(loads, offset_s=offset, interval_s=interval, noise=noise, seed=seed)
        fit = align(read_meter_log(synthetic.write_csv(folder / "meter.csv", samples)), activities)
        errors["idle"].append(abs(fit.fit.idle_w / TRUE["idle"] - 1))
        errors["cpu"].append(abs(fit.fit.w_cpu / TRUE["cpu"] - 1))
        errors["gb"].append(abs(fit.fit.w_gb / TRUE["gb"] - 1))
        errors["offset"].append(abs(fit.offset_s - offset) / interval)
    parts = [f"{k} within {max(v):.1%} (over 5% in {sum(x > 0.05 for x in v)})" for k, v in errors.items()
             if k != "offset"]
    parts.append(f"offset within {max(errors['offset']):.2f} sample intervals")
    return (f"{count} trials, {n_windows} windows, {noise:.0%} noise, samples every "
            f"{'/'.join(f'{i:g}' for i in intervals)} s: " + "; ".join(parts))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(trials(12, 0.02, (0.5, 1, 2), Path(tmp)))
        print(trials(10, 0.03, (0.5, 1, 2, 5), Path(tmp)))


if __name__ == "__main__":
    main()

"""The per-variant steps of ``compare``: its pooled per-batch and per-sample latency stay exact, whatever the
meter's ``keep_steps`` (issue 15, defect 13: a meter now keeps a sketch instead of a long window's steps)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter import Meter  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.records.measurement import LatencyStats  # noqa: E402


def test_pooled_latency_is_exact_over_every_repeat_even_when_the_meter_keeps_no_steps() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(70, 8), torch.randint(0, 3, (70,))
    models = {"wide": nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3)), "narrow": nn.Linear(8, 3)}
    meter = Meter(["cpu-estimate"], sync=None, keep_steps=0)
    windows = []
    meter.listeners.append(windows.append)
    result = compare(models, (x, y), meter=meter, repeats=2, batch_size=32, min_repeat_s=0.01, progress=False)
    meter.close()
    for name in models:
        repeats = [m for m in windows if m.name.startswith(f"{name}/repeat-")]
        assert len(repeats) == 2 and all(m.steps > 0 and len(m.step_durations_s) == m.steps for m in repeats)
        assert all(m.step_sketch is None and m.latency.relative_error == 0.0 for m in repeats)
        durations = [d for m in repeats for d in m.step_durations_s]
        per_sample = [d / n for m in repeats for d, n in zip(m.step_durations_s, m.step_samples)]
        assert all(m.step_samples[:3] == (32, 32, 6) for m in repeats)  # batches of 32, 32 and 6 samples
        v = result.variant(name)
        assert v.latency_batch == LatencyStats.from_durations(durations)
        assert v.latency_sample == LatencyStats.from_durations(per_sample)
        assert v.latency_batch.count == result.passes_per_repeat * 3 * 2

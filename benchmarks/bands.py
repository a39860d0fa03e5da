"""How wide each source's band is: this machine's sources, and those of a typical bare-metal GPU server.

Prints, for each source, the band of a window at a stated mean power and several window lengths, as the
backends themselves state it (their BandModel), and the band of an energy ratio of two figures of one source
(the shared constants cancel). The bare-metal sources are the real backends on a fake powercap tree, a fake
NVML module and a cpuinfo naming a CPU in CodeCarbon's TDP table, so the figures are the code's, not typed in.

    python benchmarks/bands.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenmeter._text import text_table  # noqa: E402
from greenmeter.sources.band import BandModel, ratio_band  # noqa: E402
from greenmeter.sources.cpu_estimate import CpuEstimateBackend  # noqa: E402
from greenmeter.sources.nvml import NvmlBackend  # noqa: E402
from greenmeter.sources.ram_estimate import RamEstimateBackend  # noqa: E402
from greenmeter.sources.rapl import RaplBackend  # noqa: E402
from tests.fakes.cpuinfo import write_cpuinfo  # noqa: E402
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml  # noqa: E402
from tests.fakes.powercap import FakePowercap  # noqa: E402

WINDOWS_S = (0.1, 1.0, 10.0, 100.0)


def _row(label: str, band: BandModel, power_w: float) -> list[str]:
    cells = [label, f"{power_w:g} W"]
    for seconds in WINDOWS_S:
        b = band.band(power_w * seconds, seconds)
        lo, hi = b.relative
        cells.append(f"{(lo - 1) * 100:+.1f}% / {(hi - 1) * 100:+.1f}%")
    return cells


def main() -> None:
    rows = [["source", "mean power", *(f"{s:g} s window" for s in WINDOWS_S)]]
    here = CpuEstimateBackend()
    rows.append(_row("this machine: cpu-estimate (process)", here.domain.band, here.power_model.p_max_w_per_vcpu))
    machine = CpuEstimateBackend("machine")
    rows.append(_row("this machine: cpu-estimate (machine)", machine.domain.band,
                     machine.vcpus * machine.power_model.p_max_w_per_vcpu))
    rows.append(_row("this machine: ram-estimate (1 GB)", RamEstimateBackend().domain.band, 0.392))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        FakePowercap(root).add_package(0)
        probe = RaplBackend(root).probe()
        rows.append(_row("bare metal: RAPL package", probe.domains[0].band, 150.0))
        xeon = CpuEstimateBackend(cpuinfo_path=write_cpuinfo(root, "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
                                                             vendor_id="GenuineIntel", siblings=40, cores=20))
        rows.append(_row("bare metal: cpu-estimate, TDP row (process)", xeon.domain.band,
                         xeon.power_model.p_max_w_per_vcpu))
    sys.modules["pynvml"] = make_fake_pynvml(FakeGpu())
    rows.append(_row("bare metal: NVML energy counter", NvmlBackend().probe().domains[0].band, 700.0))
    sys.modules["pynvml"] = make_fake_pynvml(FakeGpu(energy_mj=None))
    rows.append(_row("bare metal: NVML power samples (0.1 s)", NvmlBackend().probe().domains[0].band, 300.0))
    del sys.modules["pynvml"]
    print(text_table(rows))
    print()
    band = here.domain.band
    variant, baseline = band.band(0.2 * 10.0, 1.0), band.band(10.0, 1.0)
    r = ratio_band(variant, baseline)
    apart = (variant.low_j / baseline.high_j, variant.high_j / baseline.low_j)
    print(f"energy ratio of two 1 s windows of this machine's cpu-estimate (2 J against 10 J): x{r.value:.3f}, "
          f"band x{r.low:.3f}-x{r.high:.3f} with the shared constants cancelled; x{apart[0]:.3f}-x{apart[1]:.3f} "
          "if they were independent")


if __name__ == "__main__":
    main()

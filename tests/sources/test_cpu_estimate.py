"""The CPU energy estimate: constants chosen from fake cpuinfo files, energy checked against the formula.

CPU time and the clock are real; every expected value brackets the backend's reading between counter
values taken just before and just after it, so no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from greenmeter import ConfigError
from greenmeter.sources.cpu_estimate import CCF_COEFFICIENTS, IDLE_FRACTION_OF_TDP, CpuEstimateBackend
from greenmeter.sources.cpu_model import (
    codecarbon_tdp_table_path,
    is_generic_model_name,
    lookup_tdp,
    normalise_model_name,
    read_cpu_facts,
)
from tests.fakes.cpuinfo import write_cpuinfo

TABLE = codecarbon_tdp_table_path()
needs_table = pytest.mark.skipif(TABLE is None, reason="codecarbon's cpu_power.csv is not installed")
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def table_tdp(name: str) -> float:
    """The TDP of a row of CodeCarbon's table, read independently of the code under test."""
    assert TABLE is not None
    with open(TABLE, encoding="utf-8", newline="") as handle:
        return next(float(row[1]) for row in csv.reader(handle) if row and row[0] == name)


def process_cpu_s() -> float:
    t = os.times()
    return t[0] + t[1] + t[2] + t[3]


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + t.nice + t.irq + t.softirq


def burn(cpu_s: float) -> None:
    start = process_cpu_s()
    while process_cpu_s() - start < cpu_s:
        pass


def constants(backend: CpuEstimateBackend) -> dict:
    return dict(backend.domain.provenance.constants)


# --- process mode: E = t_cpu x P_max_vcpu ---------------------------------------------------------


def test_process_mode_charges_cpu_time_at_a_busy_vcpus_power(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC", hypervisor=True)
    before = process_cpu_s()
    backend = CpuEstimateBackend(cpuinfo_path=path)
    after = process_cpu_s()
    burn(0.05)
    first = process_cpu_s()
    reading = backend.read()
    last = process_cpu_s()

    p_max = backend.power_model.p_max_w_per_vcpu
    energy = reading.energy_j["cpu-estimate:cpu"]
    assert (first - after) * p_max <= energy <= (last - before) * p_max
    assert energy >= 0.05 * p_max - TICK_S * p_max
    assert reading.timestamp_s <= time.monotonic()


def test_two_reads_differ_by_the_cpu_time_between_them(tmp_path):
    backend = CpuEstimateBackend(cpuinfo_path=write_cpuinfo(tmp_path, "AMD EPYC", hypervisor=True))
    a0 = process_cpu_s()
    r0 = backend.read()
    a1 = process_cpu_s()
    burn(0.03)
    b0 = process_cpu_s()
    r1 = backend.read()
    b1 = process_cpu_s()
    p_max = backend.power_model.p_max_w_per_vcpu
    delta = r1.energy_j["cpu-estimate:cpu"] - r0.energy_j["cpu-estimate:cpu"]
    assert (b0 - a1) * p_max - 1e-12 <= delta <= (b1 - a0) * p_max + 1e-12
    assert r1.timestamp_s > r0.timestamp_s


def test_domain_and_provenance(tmp_path):
    backend = CpuEstimateBackend(cpuinfo_path=write_cpuinfo(tmp_path, "AMD EPYC", hypervisor=True))
    probe = backend.probe()
    assert probe.available and probe.reason == ""
    (domain,) = probe.domains
    assert (domain.key, domain.kind, domain.in_total) == ("cpu-estimate:cpu", "cpu", True)
    assert domain.update_period_s == TICK_S
    assert domain.provenance.kind == "estimated"
    assert domain.provenance.source == "CPU power model (cpu-estimate)"
    assert "os.times" in domain.provenance.method
    assert backend.poll_interval_s is None
    const = constants(backend)
    assert const["mode"] == "process"
    assert const["vcpus"] == len(os.sched_getaffinity(0))
    assert const["p_max_w"] == const["p_max_w_per_vcpu"] * const["vcpus"]
    for key in ("coefficients_source", "tdp_source", "p_idle_source", "p_max_source"):
        assert const[key]
    json.dumps(domain.provenance.to_dict())  # plain data, storable as is
    backend.close()
    backend.close()


# --- constants: CodeCarbon TDP path ------------------------------------------------------------------


@needs_table
def test_tdp_path_uses_the_share_of_the_chips_threads(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC 7601 32-Core Processor", sockets=2, siblings=64, cores=32)
    backend = CpuEstimateBackend(cpuinfo_path=path)
    tdp = table_tdp("AMD EPYC 7601")
    visible = len(os.sched_getaffinity(0))
    const = constants(backend)
    assert const["coefficients"] == "codecarbon-tdp"
    assert const["tdp_w"] == tdp
    assert "'AMD EPYC 7601'" in const["tdp_source"]
    assert backend.power_model.p_max_w_per_vcpu == tdp / 64
    assert backend.power_model.p_idle_w_per_vcpu == IDLE_FRACTION_OF_TDP * tdp / 64
    # TDP x sockets x (visible / (siblings x sockets)): this process's share of the two chips.
    assert const["p_max_w"] == pytest.approx(tdp * 2 * visible / (64 * 2), rel=1e-12)
    assert const["idle_fraction_of_tdp"] == 0.1 and "CodeCarbon" in const["idle_fraction_source"]


@needs_table
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to narrow the affinity")
def test_tdp_share_follows_the_cpus_this_process_may_use(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC 7601 32-Core Processor", sockets=1, siblings=64, cores=32)
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(saved)})
    try:
        backend = CpuEstimateBackend(cpuinfo_path=path)
    finally:
        os.sched_setaffinity(0, saved)
    assert backend.vcpus == 1
    assert constants(backend)["p_max_w"] == table_tdp("AMD EPYC 7601") / 64


@needs_table
def test_vm_sized_like_a_whole_socket_keeps_the_tdp_path(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC 7601 32-Core Processor", siblings=64, cores=32, hypervisor=True)
    backend = CpuEstimateBackend(cpuinfo_path=path)
    assert constants(backend)["coefficients"] == "codecarbon-tdp"
    assert backend.power_model.p_max_w_per_vcpu == table_tdp("AMD EPYC 7601") / 64


@needs_table
def test_small_vm_with_a_known_chip_falls_back_to_per_vcpu_coefficients(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC 7601 32-Core Processor", siblings=2, cores=1, hypervisor=True)
    backend = CpuEstimateBackend(cpuinfo_path=path)
    const = constants(backend)
    assert const["coefficients"] == "ccf-amd-epyc-1st-gen"
    assert (backend.power_model.p_idle_w_per_vcpu, backend.power_model.p_max_w_per_vcpu) == (0.82, 2.55)
    assert const["tdp_w"] == table_tdp("AMD EPYC 7601") and "(not used)" in const["tdp_source"]
    assert any("share of the" in note for note in backend.probe().notes)


@needs_table
def test_model_names_lose_only_vendor_decorations():
    assert normalise_model_name("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz") == "Intel Xeon Gold 6148"
    assert normalise_model_name("13th Gen Intel(R) Core(TM) i7-13700K") == "Intel Core i7-13700K"
    assert normalise_model_name("AMD Ryzen 7 5800H with Radeon Graphics") == "AMD Ryzen 7 5800H"
    assert normalise_model_name("AMD  EPYC 7601 32-Core Processor ") == "AMD EPYC 7601"
    match = lookup_tdp("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz")
    assert match is not None
    assert (match.table_name, match.tdp_w) == ("Intel Xeon Gold 6148", table_tdp("Intel Xeon Gold 6148"))
    assert lookup_tdp("Intel Xeon Gold 614") is None  # exact only: no nearest neighbour
    assert lookup_tdp("AMD EPYC") is None


def test_tdp_table_rows_that_are_ambiguous_or_malformed_never_match(tmp_path):
    table = tmp_path / "cpu_power.csv"
    table.write_text(
        "Name,TDP\n"
        "Acme X1,65\n"
        "Acme X1,95\n"
        "Acme X2,70\n"
        "Acme  X2,70.0\n"
        "Acme X3,27.29.5\n"
        '"Acme X4 (8M Cache, up to 4.00 GHz)",35\n',
        encoding="utf-8",
    )
    assert lookup_tdp("Acme X1", table) is None  # listed twice with different TDPs
    match = lookup_tdp("Acme X2", table)
    assert match is not None and (match.tdp_w, match.table_name) == (70.0, "Acme X2")
    assert lookup_tdp("Acme X3", table) is None  # TDP is not a number
    match = lookup_tdp("Acme X4 (8M Cache, up to 4.00 GHz)", table)
    assert match is not None and match.tdp_w == 35.0
    assert lookup_tdp(None, table) is None and lookup_tdp("Acme X1", tmp_path / "absent.csv") is None


def test_generic_names():
    for name in ("AMD EPYC", "Intel(R) Xeon(R) CPU @ 2.20GHz", "QEMU Virtual CPU version 2.5+", "", None):
        assert is_generic_model_name(name)
    for name in ("AMD EPYC 7R13 Processor", "Apple M1", "Intel(R) Core(TM) i7-1068NG7 CPU @ 2.30GHz"):
        assert not is_generic_model_name(name)


def test_cpuinfo_facts_are_parsed(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC 7601 32-Core Processor", sockets=2, siblings=64, cores=32)
    facts = read_cpu_facts(path)
    assert facts.model_name == "AMD EPYC 7601 32-Core Processor"
    assert (facts.vendor_id, facts.cpu_family) == ("AuthenticAMD", 23)
    assert (facts.sockets, facts.threads_per_socket, facts.cores_per_socket) == (2, 64, 32)
    assert facts.brand_cores == 32
    assert not facts.hypervisor and facts.readable
    assert facts.visible_cpus == len(os.sched_getaffinity(0)) and facts.logical_cpus == os.cpu_count()


# --- constants: Cloud Carbon Footprint fallbacks --------------------------------------------------------


def test_vm_with_generic_name_uses_ccf_amd_epyc_average(tmp_path):
    backend = CpuEstimateBackend(cpuinfo_path=write_cpuinfo(tmp_path, "AMD EPYC", hypervisor=True))
    const = constants(backend)
    assert const["coefficients"] == "ccf-amd-epyc-average"
    assert backend.power_model.p_idle_w_per_vcpu == pytest.approx((0.82 + 0.47 + 0.45) / 3, rel=1e-12)
    assert backend.power_model.p_max_w_per_vcpu == pytest.approx((2.55 + 1.69 + 2.02) / 3, rel=1e-12)
    assert const["tdp_w"] is None
    assert "cloud carbon footprint" in const["coefficients_source"].lower()
    assert any("generic CPU model name 'AMD EPYC'" in note for note in backend.probe().notes)


def test_epyc_generation_is_read_from_the_model_number(tmp_path):
    backend = CpuEstimateBackend(cpuinfo_path=write_cpuinfo(tmp_path, "AMD EPYC 7R32", hypervisor=True))
    assert constants(backend)["coefficients"] == "ccf-amd-epyc-2nd-gen"
    assert backend.power_model.p_max_w_per_vcpu == CCF_COEFFICIENTS["ccf-amd-epyc-2nd-gen"][1] == 1.69


def test_unknown_chip_uses_the_ccf_cloud_average(tmp_path):
    path = write_cpuinfo(tmp_path, "Acme Turbo 9000", vendor_id="GenuineIntel", cpu_family=6)
    backend = CpuEstimateBackend(cpuinfo_path=path)
    assert constants(backend)["coefficients"] == "ccf-aws-average"
    assert (backend.power_model.p_idle_w_per_vcpu, backend.power_model.p_max_w_per_vcpu) == (0.74, 3.5)
    assert any("'Acme Turbo 9000' is not in CodeCarbon's TDP table" in note for note in backend.probe().notes)


def test_unreadable_cpuinfo_still_estimates_and_says_so(tmp_path):
    backend = CpuEstimateBackend(cpuinfo_path=tmp_path / "missing")
    probe = backend.probe()
    assert probe.available
    assert any("cannot read" in note and "generic" in note for note in probe.notes)
    assert constants(backend)["coefficients"] == "ccf-aws-average"
    assert backend.read().energy_j["cpu-estimate:cpu"] >= 0.0


# --- user overrides ------------------------------------------------------------------------------------


def test_user_overrides_become_the_stated_constants(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC", hypervisor=True)
    backend = CpuEstimateBackend("machine", cpuinfo_path=path, p_idle_w=20.0, p_max_w=100.0)
    n = os.cpu_count()
    const = constants(backend)
    assert const["coefficients"] == "user"
    assert backend.power_model.p_idle_w_per_vcpu == 20.0 / n
    assert backend.power_model.p_max_w_per_vcpu == 100.0 / n
    assert "user override p_max_w=100 W" in const["p_max_source"]
    assert const["p_max_w"] == pytest.approx(100.0, rel=1e-12)


def test_one_override_keeps_the_other_modelled_constant(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC", hypervisor=True)
    backend = CpuEstimateBackend(cpuinfo_path=path, p_max_w=50.0)
    assert backend.power_model.p_max_w_per_vcpu == 50.0 / os.cpu_count()
    assert backend.power_model.p_idle_w_per_vcpu == CCF_COEFFICIENTS["ccf-amd-epyc-average"][0]
    assert constants(backend)["p_idle_source"] == "ccf-amd-epyc-average"


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "thread"},
        {"mode": "Process"},
        {"p_max_w": -1.0},
        {"p_idle_w": float("nan")},
        {"p_idle_w": 50.0, "p_max_w": 10.0},
        {"p_max_w": 1e-6},  # below the modelled idle power
    ],
)
def test_bad_configuration_is_a_config_error(tmp_path, options):
    path = write_cpuinfo(tmp_path, "AMD EPYC", hypervisor=True)
    with pytest.raises(ConfigError):
        CpuEstimateBackend(cpuinfo_path=path, **options)
    with pytest.raises(ValueError):  # ConfigError is a ValueError too
        CpuEstimateBackend(cpuinfo_path=path, **options)


# --- machine mode: E = n P_idle dt + t_busy (P_max - P_idle) ----------------------------------------------


def test_machine_mode_formula(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC", hypervisor=True)
    t0a, b0a = time.monotonic(), machine_busy_s()
    backend = CpuEstimateBackend("machine", cpuinfo_path=path, p_idle_w=10.0, p_max_w=60.0)
    b0b, t0b = machine_busy_s(), time.monotonic()
    burn(0.03)
    t1a, b1a = time.monotonic(), machine_busy_s()
    reading = backend.read()
    b1b, t1b = machine_busy_s(), time.monotonic()

    n = os.cpu_count()
    assert backend.vcpus == n
    p_idle, p_max = 10.0 / n, 60.0 / n
    energy = reading.energy_j["cpu-estimate:cpu"]
    lower = n * p_idle * (t1a - t0b) + (b1a - b0b) * (p_max - p_idle)
    upper = n * p_idle * (t1b - t0a) + (b1b - b0a) * (p_max - p_idle)
    assert lower - 1e-9 <= energy <= upper + 1e-9
    assert "psutil.cpu_times" in backend.domain.provenance.method
    assert not any("DataLoader" in note for note in backend.probe().notes)


# --- codecarbon is located, never imported ---------------------------------------------------------------


@pytest.mark.slow
def test_probe_and_read_never_import_codecarbon(tmp_path):
    path = write_cpuinfo(tmp_path, "AMD EPYC 7601 32-Core Processor", siblings=64)
    code = (
        "import sys\n"
        "from greenmeter.sources.cpu_estimate import CpuEstimateBackend\n"
        f"b = CpuEstimateBackend(cpuinfo_path={str(path)!r})\n"
        "b.probe(); b.read()\n"
        "print(b.domain.provenance.constants['coefficients'])\n"
        "assert 'codecarbon' not in sys.modules, sorted(m for m in sys.modules if 'codecarbon' in m)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("codecarbon-tdp" if TABLE is not None else "ccf-amd-epyc-1st-gen")

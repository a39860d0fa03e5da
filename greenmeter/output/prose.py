"""The prose of a report: sources, environment, methodology, flags and the model-card block.

Pure functions of stored records, used by :mod:`greenmeter.output.comparison_view` and :mod:`greenmeter.output.run_view`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from greenmeter._text import terminal_text
from greenmeter.comparison.recommend import tolerance_text
from greenmeter.output.model_card import yaml_float, yaml_text
from greenmeter.records.comparison import band_note

if TYPE_CHECKING:
    from greenmeter.carbon.settings import CarbonEstimate
    from greenmeter.records.comparison import Comparison
    from greenmeter.records.measurement import HostInfo

__all__ = [
    "carbon_lines", "comparison_flags", "comparison_methodology", "comparison_model_card", "comparison_sources",
    "environment_items", "group_flags", "provenance_kind", "source_constants",
]


def source_constants(sources: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """Each estimated source's constants (``name = value``), with their ``*_source`` entries, for the page.

    ``sources`` are provenance dicts with a ``key`` (``Comparison.sources``, or a domain's
    ``provenance.to_dict()`` plus its key). Measured sources have no constants and are left out.
    """
    out = []
    for src in sources:
        constants = src.get("constants") or {}
        if not constants:
            continue
        items = tuple((str(k), "–" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)))
                      for k, v in constants.items())
        out.append((f"{src.get('key', '?')} ({src.get('kind', '?')}: {src.get('source', '?')})", items))
    return tuple(out)


def carbon_lines(carbon: CarbonEstimate | None) -> list[tuple[str, str]]:
    """The grid intensity (with its source, or ASSUMED) and the PUE (with its source) as badged lines."""
    if carbon is None:
        return []
    i = carbon.intensity
    return [("assumed" if i.assumed else "grid", f"grid intensity {i.intensity_g_per_kwh:.4g} g CO2e/kWh, "
                                                 f"{i.region_name}: {i.source}"
             + (" (ASSUMED world average: no location was given)" if i.assumed else "")),
            ("pue", f"PUE {carbon.pue:g}: {carbon.pue_source}")]


def provenance_kind(line: str) -> str:
    """``"measured"`` or ``"estimated"`` from a provenance line ``"<domain key>: <kind>: <source> (<method>)"``."""
    parts = line.split(": ", 2)
    kind = parts[1] if len(parts) > 1 else parts[0]
    return kind if kind in ("measured", "estimated") else "unknown"


def comparison_sources(c: Comparison) -> tuple[tuple[str, str], ...]:
    lines = dict.fromkeys(line for v in c.variants for line in v.provenance)
    out = [(provenance_kind(line), line) for line in lines]
    out += carbon_lines(next((v.carbon_per_million for v in c.variants if v.carbon_per_million), None))
    return tuple(out)


def comparison_methodology(c: Comparison, tolerance: float) -> tuple[str, ...]:
    tol = tolerance_text(c, tolerance)
    return (
        f"Every variant ran on the same {c.samples_per_pass:,} evaluation samples on this machine. After "
        f"{c.warmup} untimed warm-up pass(es) each, the variants were measured in {c.repeats} interleaved "
        f"repeats (A B C, A B C, ...), so drift on the machine does not favour one of them; each repeat made "
        f"{c.passes_per_repeat} pass(es) over the data so the energy source could resolve it, with "
        f"torch.manual_seed({c.seed}) before each repeat, outside its window.",
        "Energy per sample is the energy of a repeat's window over the samples it processed; the table gives "
        "its mean over the repeats with a 95% confidence interval (Student's t). The energy difference to the "
        "baseline is tested over the repeats (the test is named in each row); a variant has a measurable saving "
        "only when its energy is significantly lower (p < 0.05). Latency percentiles are over every measured "
        "batch.",
        f"The {c.metric_name} change of each variant is tested on the same samples, paired: McNemar's exact test "
        "on each sample's right-or-wrong outcome for accuracy, a paired bootstrap over the samples (the metric "
        "recomputed on each resample) for other metrics; the table gives its 95% interval.",
        "Carbon = energy x PUE x grid intensity. The making energy is the energy measured while building a "
        "variant (training, fine-tuning, calibration, conversion); break-even = making energy / (baseline "
        "minus variant energy per sample), given only for a measurable saving.",
        f"The Pareto front of {c.metric_name} against energy per sample is drawn among the baseline and the "
        f"variants with a measurable saving. The recommended variant has a measurable saving, keeps the lower "
        f"end of the 95% interval of its {c.metric_name} change within {tol} of the baseline, and uses the least "
        f"energy per sample among those; variants whose energies do not differ significantly from the least are "
        f"tied, and a tie goes to the higher {c.metric_name}, then the lower making energy (the summary names "
        "the tie and the rule that broke it).",
        "Where a figure is estimated rather than read from a hardware counter, the sources section says which "
        "model and constants produced it; estimates rank variants by compute but carry the model's error "
        "in absolute joules.",
        "The band of each energy figure answers another question than its confidence interval: not how much the "
        "repeats varied, but how far off the sources themselves could be, with their constants anywhere in their "
        "stated ranges (an estimate's watts per vCPU across the chips this vCPU could be, a memory source's "
        "watts per GB) and their resolution (the CPU-time tick, a counter's unit and update period). "
        + band_note(c).removeprefix("band: ").capitalize() + ".",
    )


def comparison_model_card(c: Comparison, recommended: str | None) -> str:
    """The Hugging Face ``co2_eq_emissions`` block for making the recommended variant (or a comment why not)."""
    chosen = c.variant(recommended) if recommended else None
    if chosen is None or chosen.making is None or chosen.making.co2e_g is None:
        who = terminal_text(recommended) if recommended else "no variant"  # a YAML comment: one line
        return (f"# greenmeter: the recommended variant ({who}) has no recorded making energy, so there is no "
                f"co2_eq_emissions block to give for it.\n")
    carbon = chosen.carbon_per_million
    location = carbon.intensity.region_name if carbon and not carbon.intensity.assumed else None
    source = f"greenmeter {c.host.greenmeter}; " + "; ".join(chosen.making.provenance)
    lines = [
        f"# greenmeter: making the variant {chosen.name!r} ({chosen.recipe or 'given model'}): "
        f"{chosen.making.energy_j:.6g} J",
        "co2_eq_emissions:",
        f"  emissions: {yaml_float(chosen.making.co2e_g)}",
        f"  source: {yaml_text(source)}",
        f"  training_type: {yaml_text('fine-tuning' if chosen.making.trains else 'post-training compression')}",
    ]
    lines.append(f"  geographical_location: {yaml_text(location)}" if location else
                 "  # geographical_location left out: the grid region was assumed")
    lines.append(f"  hardware_used: {yaml_text(f'{c.host.cpu_model} ({c.host.logical_cpus} logical CPUs)')}")
    return "\n".join(lines) + "\n"


def group_flags(pairs: Sequence[tuple[str, str]], everyone: int) -> list[str]:
    """``(owner, flag)`` pairs as one line per flag naming its owners, or the flag alone when all ``everyone`` share it."""
    by_flag: dict[str, list[str]] = {}
    for owner, flag in pairs:
        by_flag.setdefault(flag, []).append(owner)
    out = []
    for flag, owners in by_flag.items():
        owners = list(dict.fromkeys(owners))
        if len(owners) >= everyone:
            out.append(flag)
        elif len(owners) > 4:
            out.append(f"{', '.join(owners[:3])} and {len(owners) - 3} more: {flag}")
        else:
            out.append(f"{', '.join(owners)}: {flag}")
    return out


def comparison_flags(c: Comparison) -> tuple[str, ...]:
    """The comparison's flags, then each variant flag once, naming the variants it applies to."""
    flags = list(c.flags)
    flags += group_flags([(v.name, f) for v in c.variants for f in v.flags], sum(v.ok for v in c.variants))
    flags += [f"{v.name}: failed: {v.error}" for v in c.variants if not v.ok]
    return tuple(dict.fromkeys(flags))


def environment_items(host: HostInfo | None, backends: Sequence[str],
                      torch_threads: int | None = None) -> tuple[tuple[str, str], ...]:
    threads = (("PyTorch threads", str(torch_threads)),) if torch_threads is not None else ()
    if host is None:
        return (("energy sources", ", ".join(backends) or "–"), *threads)
    memory = f"{host.memory_total_b / 2**30:.1f} GiB" if host.memory_total_b else "unknown"
    vm = {True: "yes", False: "no", None: "unknown"}[host.virtual_machine]
    return (
        ("CPU", f"{host.cpu_model} ({host.logical_cpus} logical CPUs)"), ("memory", memory),
        ("virtual machine", vm), ("OS", host.os), ("Python", host.python), ("PyTorch", host.torch or "–"),
        *threads, ("CUDA", host.cuda or "none"), ("greenmeter", host.greenmeter), ("host", host.hostname),
        ("energy sources", ", ".join(backends) or "–"),
    )

"""``greenmeter demo``: the whole loop on bundled data, in one command.

1. Train the baseline CNN on scikit-learn's digits, the training loop under ``@greenmeter.track`` with
   steps and epochs marked, stored in a run store.
2. Build every compression variant from it with the recipes (unstructured, structured and
   lottery-ticket pruning, dynamic and static int8, packed 4-bit, QAT, distillation, early exit), the
   energy of making each one measured.
3. Compare the baseline and the variants side by side: interleaved repeats, confidence intervals,
   significance, Pareto front, break-even.
4. Ask :func:`greenmeter.optimize` for the cheapest variant within half a point of accuracy: per-layer
   sensitivity, single and stacked recipes, screened on measured energy, the finalists compared side by side
   (in a time budget that keeps the whole demo within a few minutes).
5. Write the HTML report of the comparison (the main output), the report of the optimize decision, the
   training run's report, and the comparison as JSON, CSV and Markdown; print the table, the decision and
   where the files are.

``--quick`` runs a smaller version (fewer epochs and repeats) for CI and a first look.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import greenmeter
from greenmeter._errors import ConfigError, StoreError
from greenmeter.comparison.progress import progress_printer
from greenmeter.comparison.recipes import RecipeContext
from greenmeter.demo.digits import DigitsData, accuracy, batches, load_digits_data, make_digits_cnn, train_classifier
from greenmeter.metering.meter import Meter
from greenmeter.output.report import comparison_report, optimize_report, run_report, write_report
from greenmeter.store.database import Store

if TYPE_CHECKING:
    from greenmeter.carbon.settings import CarbonSettings
    from greenmeter.records.comparison import Comparison
    from greenmeter.records.measurement import Measurement
    from greenmeter.records.optimization import OptimizeResult

__all__ = ["DEMO_RECIPES", "DemoResult", "DemoSettings", "demo_context", "run_demo"]

#: The variants the demo builds, by name, each from a recipe (see ``greenmeter.comparison.recipes``).
DEMO_RECIPES: dict[str, str] = {
    "prune:0.5": "prune:0.5",          # unstructured global magnitude pruning, half the weights
    "channels:0.5": "channels:0.5",    # structured: half the channels removed, fine-tuned
    "ticket:0.2": "ticket:0.2",        # lottery ticket: 20% of the weights kept, rewound and retrained
    "int8-dynamic": "int8-dynamic",    # dynamic int8 (Linear layers)
    "int8-static": "int8-static",      # static int8 with calibration (conv and Linear)
    "int4": "int4",                    # 4-bit weights, per-group scales; PyTorch's int4 CPU kernel where it runs
    "qat": "qat",                      # quantization-aware fine-tuning, converted to real int8
    "distill:0.5": "distill:0.5",      # a half-width student distilled from the baseline
    # exit heads at every possible place, trained on the frozen backbone; the exits and threshold kept are those of
    # least measured time at batch 1 within 0.5 pp on the validation images
    "early-exit:auto": "early-exit:auto",
}


@dataclass(frozen=True)
class DemoSettings:
    """How much work the demo does: baseline epochs, repeats, recipe training epochs."""

    epochs: int
    repeats: int
    fine_tune_epochs: int
    train_epochs: int
    min_repeat_s: float | None
    optimize_budget_s: float = 120.0


#: The accuracy budget of the demo's optimize step: half a percentage point.
OPTIMIZE_MAX_DROP = 0.005

FULL = DemoSettings(epochs=20, repeats=5, fine_tune_epochs=3, train_epochs=10, min_repeat_s=None, optimize_budget_s=120)
QUICK = DemoSettings(epochs=4, repeats=3, fine_tune_epochs=1, train_epochs=2, min_repeat_s=0.1, optimize_budget_s=25)


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced: the records and the files written under ``out_dir``."""

    comparison: Comparison
    training: Measurement
    baseline_accuracy: float
    files: dict[str, Path]
    duration_s: float
    optimization: OptimizeResult | None = None


def _remove_old_store(path: Path) -> None:
    """Delete the store a previous demo left at ``path`` (with its WAL files); refuse anything else there.

    Raises:
        ConfigError: the file is not a greenmeter store that can be read (another program's file, a damaged
            or locked store, or one this greenmeter cannot read): it is left as it is.
    """
    if not os.path.lexists(path):
        return
    try:
        Store(path, readonly=True).close()
    except StoreError as err:
        raise ConfigError(f"the demo's output folder already holds {path}, which the demo would replace, but it is "
                          f"not a greenmeter run store it can read ({err}); it is left as it is: choose another "
                          "output folder (--out), or move the file away") from err
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            leftover.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            raise ConfigError(f"cannot replace the demo's old run store {leftover}: {err.strerror or err}") from err


def demo_context(data: DigitsData, val: DigitsData, settings: DemoSettings) -> RecipeContext:
    """What the demo's recipes train and calibrate on: the training part of ``data`` (fine-tuning and students at
    ``settings``' epochs) and the validation images ``val.x_test`` (the early-exit threshold and exits, and
    optimize's choices)."""
    import torch

    def train_fn(m: torch.nn.Module, loss_fn: Any = None, epochs: int | None = None) -> None:
        train_classifier(m, data, epochs=epochs or settings.fine_tune_epochs, loss_fn=loss_fn)

    return RecipeContext(
        example_input=data.x_test[:64], train_data=lambda: batches(data.x_train, data.y_train, 64, shuffle=True),
        train_fn=train_fn, val_data=(val.x_test, val.y_test), fine_tune_epochs=settings.fine_tune_epochs,
        train_epochs=settings.train_epochs,
    )


def run_demo(out_dir: str | Path = "greenmeter-demo", *, quick: bool = False, carbon: CarbonSettings | None = None,
             progress: bool | Callable[[str], None] = True, recipes: dict[str, str] | None = None,
             optimize: bool = True) -> DemoResult:
    """Run the demo and write its files to ``out_dir`` (created if missing).

    Args:
        out_dir: where the store and the reports go.
        quick: the smaller version (about a minute on 2 cores) instead of the full one.
        carbon: grid intensity and PUE (default: the world average, marked as assumed in the report).
        progress: ``True`` for progress on standard error, ``False`` for none, or a callable given each line
            (as :func:`greenmeter.compare` takes it, and passed on to it).
        recipes: the variants to build (default :data:`DEMO_RECIPES`).
        optimize: also run :func:`greenmeter.optimize` (budget :data:`OPTIMIZE_MAX_DROP`) after the comparison.

    Raises:
        ConfigError: ``out_dir`` cannot be created or written; it holds a ``runs.db`` that is not a
            greenmeter store (never deleted); a bad ``progress``.
    """
    say = progress_printer(progress, prefix="greenmeter demo: ")
    import torch

    started = time.perf_counter()
    settings = QUICK if quick else FULL
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the demo's output folder {out}: {err.strerror or err}") from err
    store_path = out / "runs.db"
    _remove_old_store(store_path)  # each demo starts a fresh store; its reports are rewritten too
    torch.manual_seed(0)
    data, val = load_digits_data().validation_split()  # the last 20% of the training images: chosen on, never trained on
    say(f"digits: {len(data.x_train)} training, {len(val.x_test)} validation and {len(data.x_test)} test images; "
        f"{'quick' if quick else 'full'} run, output in {out}")

    store = Store(store_path)
    try:
        meter = Meter(store=store, name="demo: train the baseline", carbon=carbon)
        model = make_digits_cnn(seed=0)

        @greenmeter.track(name="train-baseline", meter=meter, samples=len(data.x_train) * settings.epochs)
        def train() -> None:
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
            m = greenmeter.current_meter()
            for epoch in range(settings.epochs):
                model.train()
                for xb, yb in batches(data.x_train, data.y_train, 64, shuffle=True, seed=epoch):
                    opt.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.cross_entropy(model(xb), yb)
                    loss.backward()
                    opt.step()
                    m.step(len(xb))
                sched.step()
                m.epoch()
                say(f"train baseline: epoch {epoch + 1}/{settings.epochs}, last loss {loss.item():.3f}")
            model.eval()

        train()
        training = train.last_measurement  # type: ignore[attr-defined]
        training_run = meter.run_id
        meter.close()
        base_acc = accuracy(model, data.x_test, data.y_test)
        say(f"baseline trained: {base_acc * 100:.2f}% test accuracy, {training.energy_j:.4g} J "
            f"({'measured' if training.measured else 'estimated'})")

        context = demo_context(data, val, settings)
        variants: dict[str, Any] = {"float": model, **(DEMO_RECIPES if recipes is None else recipes)}
        comparison = greenmeter.compare(
            variants, (data.x_test, data.y_test), recipe_context=context, store=store, carbon=carbon,
            repeats=settings.repeats, min_repeat_s=settings.min_repeat_s, name="demo: digits CNN and its variants",
            progress=progress,
        )
        optimization = None
        if optimize:
            say(f"optimize: the least energy within {OPTIMIZE_MAX_DROP * 100:g} pp of accuracy "
                f"(time budget {settings.optimize_budget_s:.0f} s)")
            optimization = greenmeter.optimize(
                model, (data.x_test, data.y_test), max_drop=OPTIMIZE_MAX_DROP, recipe_context=context,
                val_data=context.val_data, store=store,
                carbon=carbon, time_budget_s=settings.optimize_budget_s, final_repeats=settings.repeats,
                min_repeat_s=settings.min_repeat_s, name="demo: optimize", progress=progress,
            )
        files = {
            "report": write_report(comparison_report(comparison), out / "report.html"),
            "training report": write_report(
                run_report(store.get_run(training_run), store.windows(training_run)), out / "training.html"),
            "markdown": write_report(comparison_report(comparison, "md"), out / "report.md"),
            "csv": write_report(comparison_report(comparison, "csv"), out / "comparison.csv"),
            "json": write_report(comparison.to_json() + "\n", out / "comparison.json"),
            "store": store_path,
        }
        if optimization is not None:
            files["decision report"] = write_report(optimize_report(optimization), out / "optimize.html")
            files["optimize json"] = write_report(optimization.to_json() + "\n", out / "optimize.json")
    finally:
        store.close()
    return DemoResult(comparison, training, base_acc, files, time.perf_counter() - started, optimization)

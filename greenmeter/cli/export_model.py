"""``greenmeter export-model``: write a variant a compare config describes to ONNX and measure it under ONNX Runtime.

    greenmeter export-model CONFIG --variant SPEC --out model.onnx [--quantize dynamic] [--target-key KEY]
                            [--no-compare] [--store PATH | --no-store]

The baseline, data and training of the TOML file (as for ``greenmeter compare``) build the variant (a recipe spec,
a name from the file's ``[compare.variants]``, or the baseline's name); it is exported with
:func:`greenmeter.comparison.export.export_onnx` on the first evaluation batch's inputs (a tensor, a tuple of
inputs or a dict, as ``compare`` reads them) and, unless ``--no-compare``, compared with its ONNX Runtime session
(:class:`~greenmeter.comparison.export.OnnxModel`) in one comparison: accuracy and energy per sample side by side.
The comparison is printed and stored like ``greenmeter compare``'s, and its id printed, so ``greenmeter report ID``
renders it. See docs/compare.md.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_export_model_command", "cmd_export_model"]

#: How many of the newest stored comparisons are searched for the one this command just stored.
_NEWEST = 20


def add_export_model_command(commands: Any, store_help: str) -> None:
    """Add the ``export-model`` verb to the command line's subparsers (``store_help``: the ``--store`` help, as
    every verb words it)."""
    from greenmeter.cli.arguments import target_key_arg

    cmd = commands.add_parser(
        "export-model", help="write a variant to ONNX and measure it under ONNX Runtime next to PyTorch",
        description="Build the variant a compare TOML file describes, write it to ONNX (checked under ONNX Runtime), "
                    "then compare the PyTorch variant and its ONNX Runtime session side by side and store the "
                    "comparison. Needs pip install greenmeter[onnx]. See docs/compare.md.",
    )
    cmd.add_argument("config", help="the TOML file: [model], [data], [training] as for compare")
    cmd.add_argument("--variant", required=True, metavar="SPEC",
                     help="a recipe spec (prune:0.5), a variant named in the file, or the baseline's name")
    cmd.add_argument("--out", required=True, metavar="PATH", help="the .onnx file to write")
    cmd.add_argument("--quantize", choices=("dynamic",), default=None,
                     help="quantize the exported graph's weights to int8 with ONNX Runtime's quantize_dynamic")
    cmd.add_argument("--target-key", type=target_key_arg, default=None, metavar="KEY",
                     help="override data.target_key: the key of the targets in dict batches (default labels)")
    cmd.add_argument("--no-compare", action="store_true", help="only export and check; do not measure")
    cmd.add_argument("--store", default=None, help=store_help)
    cmd.add_argument("--no-store", action="store_true", help="do not store the comparison")
    cmd.add_argument("--quiet", action="store_true", help="no progress on standard error")
    cmd.set_defaults(handler=cmd_export_model)


def cmd_export_model(args: argparse.Namespace) -> int:
    """``greenmeter export-model CONFIG --variant SPEC --out PATH``: export, check, measure and store one variant."""
    from greenmeter._checks import output_file
    from greenmeter._text import terminal_text
    from greenmeter.cli.commands import store_unless_off
    from greenmeter.comparison.batches import DEFAULT_TARGET_KEY, evaluation_batches
    from greenmeter.comparison.compare import compare
    from greenmeter.comparison.config import load_compare_config
    from greenmeter.comparison.export import OnnxModel, export_onnx
    from greenmeter.comparison.recipes import RecipeContext, build_variant, check_recipe

    out = output_file("--out", args.out)
    kwargs = load_compare_config(args.config).build()
    if args.target_key is not None:
        kwargs["target_key"] = args.target_key
    baseline = kwargs["variants"][kwargs["baseline"]]
    spec = kwargs["variants"].get(args.variant, args.variant)
    if isinstance(spec, str):
        check_recipe(spec)
    target_key = kwargs.get("target_key", DEFAULT_TARGET_KEY)
    example = evaluation_batches(kwargs["data"], kwargs["batch_size"], target_key=target_key)[0].inputs
    if isinstance(spec, str):
        ctx = RecipeContext(example_input=example, train_data=kwargs.get("train_data"),
                            train_fn=kwargs.get("train_fn"), val_data=kwargs.get("val_data"), seed=kwargs["seed"],
                            target_key=target_key)
        variant = build_variant(spec, baseline, ctx)
    else:
        variant = spec
    path = export_onnx(variant, example, out, quantize=args.quantize)
    print(f"wrote {terminal_text(str(path))} ({path.stat().st_size} bytes; its outputs match the variant's under "
          "ONNX Runtime)")
    if args.no_compare:
        return 0
    settings = {key: kwargs[key] for key in ("data", "repeats", "warmup", "seed", "batch_size", "carbon",
                                             "min_repeat_s", "significance", "threads", "target_key", "output_fn")
                if key in kwargs}
    with store_unless_off(args) as store:
        result = compare({args.variant: variant, f"{args.variant}-onnx": OnnxModel(path)}, **settings,
                         name=f"export-model {args.variant}", store=store, progress=not args.quiet)
        stored = None if store is None else _stored_comparison(store, result.run_id)
    print(result.table())
    if store is not None:
        where = terminal_text(str(store.path))
        if stored is None:  # not found among the newest: say where it is rather than guess an id
            print(f"stored in {where} (run {result.run_id[:12] if result.run_id else '-'}); list it with "
                  "`greenmeter comparisons`")
        else:
            print(f"stored in {where} as comparison {stored[:12]}; render it with `greenmeter report {stored[:12]}`")
    return 0


def _stored_comparison(store: Any, run_id: str | None) -> str | None:
    """The id of the newest stored comparison measured in run ``run_id`` (the one ``compare`` just stored)."""
    if run_id is None:
        return None
    for comparison_id, *_ in store.list_comparisons(limit=_NEWEST):
        if store.get_comparison(comparison_id).run_id == run_id:
            return str(comparison_id)
    return None

"""Output formats: the one registry of every format greenmeter writes, built-in or from a plug-in.

A :class:`Format` carries its own metadata: its name, its file extension, a one-line description, and
one renderer per subject it applies to:

- ``"comparison"``: a stored comparison (:func:`~greenmeter.output.report.comparison_report`);
- ``"run"``: a stored run with its windows and power samples (:func:`~greenmeter.output.report.run_report`);
- ``"runs"``: a set of stored runs (:func:`~greenmeter.output.export.export_runs`, ``greenmeter export``);
- ``"optimization"``: an :class:`~greenmeter.records.optimization.OptimizeResult`
  (:func:`~greenmeter.output.report.optimize_report`): its final comparison's report with a decision section.

A comparison, run or optimization renderer is called as ``renderer(view, record)``: ``view`` is the
:class:`~greenmeter.output.view.ReportView` (every figure already formatted, the table's raw values in
SI units; an optimization's view is its final comparison's with ``decision`` set) and ``record`` the stored
record as JSON-ready dicts under its kind (``{"comparison": ...}``, ``{"optimization": ...}`` or
``{"run": ..., "windows": [...], "power_samples": [...]}``). A runs renderer is called as
``renderer(runs, options)`` with the :class:`~greenmeter.store.database.RunRecord` list and the
:class:`ExportOptions`. Each returns the text. A renderer is a callable, or a ``"module:function"``
string imported the first time the format renders, so listing formats (the command line does so when
it starts) imports no renderer.

The built-ins are ``html``, ``md``, ``csv``, ``json`` (comparisons and runs; ``html``, ``md`` and ``json``
also optimize results, which have no one table for ``csv``; ``csv`` and ``json`` also sets of runs), ``codecarbon`` and ``model-card`` (sets of runs). Third-party packages add formats with
an entry point in the ``greenmeter.formats`` group naming a :class:`Format` object (see
:mod:`greenmeter.plugins`); they are loaded the first time the registry is used, never at
``import greenmeter``. :func:`register_format` adds one in-process.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenmeter._checks import choice, registry_name
from greenmeter._errors import ConfigError
from greenmeter.plugins import load_plugins

if TYPE_CHECKING:
    from greenmeter.output.view import ReportView
    from greenmeter.records.run import RunRecord

__all__ = [
    "REPORT_SUBJECTS",
    "SUBJECTS",
    "ExportOptions",
    "Format",
    "RunsRenderer",
    "ViewRenderer",
    "format_for_path",
    "format_names",
    "get_format",
    "register_format",
    "unregister_format",
]

#: What a format can apply to: a comparison, a stored run, a set of stored runs, an optimize result.
SUBJECTS = ("comparison", "run", "runs", "optimization")
#: The subjects of a report (``greenmeter report``); a set of runs is exported (``greenmeter export``).
REPORT_SUBJECTS = ("comparison", "run", "optimization")

_SUBJECT_WORDS = {"comparison": "a comparison", "run": "a stored run", "runs": "a set of stored runs",
                  "optimization": "an optimize result"}

#: ``renderer(view, record) -> text`` for a comparison, a run or an optimize result.
ViewRenderer = Callable[["ReportView", Mapping[str, Any]], str]
#: ``renderer(runs, options) -> text`` for a set of stored runs.
RunsRenderer = Callable[[Sequence["RunRecord"], "ExportOptions"], str]

_EXTENSION = re.compile(r"^\.[a-z0-9][a-z0-9_.-]*$")
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ExportOptions:
    """What a renderer of a set of runs may use besides the runs; formats that do not need one ignore it.

    Attributes:
        training_type: the model card's ``training_type`` (``"pre-training"``, ``"fine-tuning"``...).
        geographical_location: the model card's ``geographical_location`` (``None``: the runs' grid regions).
    """

    training_type: str = "pre-training"
    geographical_location: str | None = None


@dataclass(frozen=True)
class Format:
    """An output format: its name, extension, description and one renderer per subject it applies to.

    Attributes:
        name: what ``--format`` and ``fmt=`` take: lower case letters, digits, ``-``, ``_`` or ``.``.
        extension: the file extension, with its dot (``".html"``); default file names use it, and
            :func:`format_for_path` recognises it.
        description: one line saying what the output is.
        comparison: the renderer of a comparison (a :data:`ViewRenderer`), or ``None``.
        run: the renderer of a stored run (a :data:`ViewRenderer`), or ``None``.
        runs: the renderer of a set of stored runs (a :data:`RunsRenderer`), or ``None``.
        charts: whether the comparison, run and optimization renderers show charts, so the view must draw
            them (matplotlib; slow, so only formats that show them ask).
        other_extensions: more extensions :func:`format_for_path` recognises (``(".htm",)``).
        optimization: the renderer of an optimize result (a :data:`ViewRenderer`; its view has a
            ``decision``), or ``None``.

    Raises:
        ConfigError: a malformed name, extension or description, no renderer, or a renderer that is
            neither callable nor a ``"module:function"`` string.
    """

    name: str
    extension: str
    description: str
    comparison: ViewRenderer | str | None = None
    run: ViewRenderer | str | None = None
    runs: RunsRenderer | str | None = None
    charts: bool = False
    other_extensions: tuple[str, ...] = ()
    optimization: ViewRenderer | str | None = None

    def __post_init__(self) -> None:
        registry_name("Format.name", self.name)
        for ext in (self.extension, *self.other_extensions):
            if not isinstance(ext, str) or not _EXTENSION.match(ext):
                raise ConfigError(f"Format {self.name!r}: an extension is a dot and lower case letters or "
                                  f"digits, such as '.html', not {ext!r}")
        if not isinstance(self.description, str) or not self.description.strip() or "\n" in self.description:
            raise ConfigError(f"Format {self.name!r}: description must be one non-empty line")
        for subject in SUBJECTS:
            renderer = getattr(self, subject)
            if renderer is not None and not callable(renderer) and not (
                    isinstance(renderer, str) and _REFERENCE.match(renderer)):
                raise ConfigError(f"Format {self.name!r}: {subject} must be a callable, a 'module:function' "
                                  f"string or None, not {renderer!r}")
        if not self.subjects:
            raise ConfigError(f"Format {self.name!r} renders nothing: give a renderer for at least one of "
                              f"{', '.join(SUBJECTS)}")
        if not isinstance(self.charts, bool):
            raise ConfigError(f"Format {self.name!r}: charts must be True or False, not {self.charts!r}")

    @property
    def subjects(self) -> tuple[str, ...]:
        """The subjects it applies to, in the order of :data:`SUBJECTS`."""
        return tuple(s for s in SUBJECTS if getattr(self, s) is not None)

    @property
    def extensions(self) -> tuple[str, ...]:
        """Its extension, then its other extensions."""
        return (self.extension, *self.other_extensions)

    def renderer(self, subject: str) -> Callable[..., str]:
        """The renderer of ``subject``, imported now when it is given as ``"module:function"``.

        Raises:
            ConfigError: the format does not apply to ``subject``, or its renderer cannot be imported.
        """
        target = getattr(self, subject) if subject in SUBJECTS else None
        if target is None:
            raise ConfigError(f"the {self.name} format does not render {_SUBJECT_WORDS.get(subject, repr(subject))}")
        if not isinstance(target, str):
            return target
        module, _, attr = target.partition(":")
        try:
            found: Callable[..., str] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"the {self.name} format's {subject} renderer {target!r} cannot be imported: "
                              f"{type(err).__name__}: {err}") from err
        if not callable(found):
            raise ConfigError(f"the {self.name} format's {subject} renderer {target!r} is not callable")
        return found


_VIEWS = "greenmeter.output.renderers"
_RUNS = "greenmeter.output.export"

_BUILTINS = (
    Format("html", ".html", "one self-contained page: summary, charts, table, sources, methodology, model card",
           comparison=f"{_VIEWS}:render_html", run=f"{_VIEWS}:render_html", charts=True, other_extensions=(".htm",),
           optimization=f"{_VIEWS}:render_html"),
    Format("md", ".md", "the report as Markdown: summary, flags, table, sources, methodology, model card",
           comparison=f"{_VIEWS}:render_markdown", run=f"{_VIEWS}:render_markdown",
           optimization=f"{_VIEWS}:render_markdown"),
    Format("csv", ".csv", "a table in SI units: one row per variant, window or run",
           comparison=f"{_VIEWS}:render_csv", run=f"{_VIEWS}:render_csv", runs=f"{_RUNS}:render_runs_csv"),
    Format("json", ".json", "the stored record(s) in SI units, with the report's summary for a comparison or run",
           comparison=f"{_VIEWS}:render_json", run=f"{_VIEWS}:render_json", runs=f"{_RUNS}:render_runs_json",
           optimization=f"{_VIEWS}:render_json"),
    Format("codecarbon", ".csv", "CodeCarbon's emissions.csv columns in its units (kWh, kg CO2e, W)",
           runs=f"{_RUNS}:render_codecarbon"),
    Format("model-card", ".yaml", "the Hugging Face model-card co2_eq_emissions YAML block, summed over the runs",
           runs=f"{_RUNS}:render_model_card", other_extensions=(".yml",)),
)

_formats: dict[str, Format] = {f.name: f for f in _BUILTINS}  # in registration order: built-ins first
_lock = threading.RLock()


def _add(fmt: Format) -> None:
    with _lock:
        if fmt.name in _formats:
            raise ConfigError(f"a format named {fmt.name!r} is already registered; choose another name")
        _formats[fmt.name] = fmt


def _register_plugin(name: str, obj: Any) -> None:
    if not isinstance(obj, Format):
        raise TypeError(f"the entry point must name a greenmeter.output.formats.Format object, not a "
                        f"{type(obj).__name__}")
    if obj.name != name:
        raise ConfigError(f"the entry point is named {name!r} but its Format is named {obj.name!r}; "
                          f"the two must match")
    _add(obj)


def _registry() -> dict[str, Format]:
    """Every format, after loading the plug-ins (once per process)."""
    load_plugins("greenmeter.formats", _register_plugin)
    return _formats


def _subjects(subject: str | Sequence[str] | None) -> tuple[str, ...]:
    wanted = SUBJECTS if subject is None else (subject,) if isinstance(subject, str) else tuple(subject)
    if not wanted:
        raise ConfigError("subject must name at least one of " + ", ".join(SUBJECTS))
    return tuple(choice("subject", s, SUBJECTS) for s in wanted)


def _applies(fmt: Format, subjects: tuple[str, ...]) -> bool:
    return any(getattr(fmt, s) is not None for s in subjects)


def _kind(subjects: tuple[str, ...]) -> str:
    if set(subjects) <= {"comparison", "run", "optimization"}:
        return "report format"
    return "export format" if subjects == ("runs",) else "format"


def register_format(fmt: Format) -> Format:
    """Add a format to the registry (for the rest of the process); returns it.

    Plug-ins are loaded first, so a name they register cannot be taken twice.

    Raises:
        ConfigError: ``fmt`` is not a :class:`Format`, or its name is already registered.
    """
    if not isinstance(fmt, Format):
        raise ConfigError(f"register_format takes a Format, not a {type(fmt).__name__}")
    _registry()
    _add(fmt)
    return fmt


def unregister_format(name: str) -> Format:
    """Remove a format added by :func:`register_format` or a plug-in; returns it.

    Raises:
        ConfigError: ``name`` is a built-in format, or no format has it.
    """
    with _lock:
        registry = _registry()
        if any(f.name == name for f in _BUILTINS):
            raise ConfigError(f"{name!r} is a built-in format and cannot be removed")
        if name not in registry:
            raise ConfigError(f"no format named {name!r} is registered")
        return registry.pop(name)


def format_names(subject: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The names of the formats that apply to ``subject``, built-ins first, in registration order.

    Args:
        subject: one of :data:`SUBJECTS`, several (a format applying to any of them counts), or
            ``None`` for every format.
    """
    subjects = _subjects(subject)
    return tuple(name for name, fmt in _registry().items() if _applies(fmt, subjects))


def get_format(name: str, subject: str | Sequence[str] | None = None) -> Format:
    """The format called ``name``, checked to apply to ``subject`` (as in :func:`format_names`).

    Raises:
        ConfigError: no such format, or it does not apply to ``subject``; the message lists the formats
            that do.
    """
    subjects = _subjects(subject)
    fmt = _registry().get(name) if isinstance(name, str) else None
    if fmt is not None and _applies(fmt, subjects):
        return fmt
    known = ", ".join(format_names(subjects))
    if fmt is None:
        raise ConfigError(f"unknown {_kind(subjects)} {name!r}: use one of {known}")
    words = " or ".join(_SUBJECT_WORDS[s] for s in subjects)
    raise ConfigError(f"the {name} format does not render {words}: use one of {known}")


def format_for_path(path: str | os.PathLike[str], subject: str | Sequence[str] | None = None) -> Format | None:
    """The format a file name's extension names (case-insensitive), or ``None`` when none does.

    When several formats share an extension (``csv`` and ``codecarbon`` both write ``.csv``), the one
    registered first wins, so a built-in keeps its extension.

    Args:
        path: the file name.
        subject: as in :func:`format_names`: only formats that apply to it are considered.
    """
    subjects = _subjects(subject)
    name = Path(path).name.lower()
    for fmt in _registry().values():
        if _applies(fmt, subjects) and any(name.endswith(ext) and len(name) > len(ext) for ext in fmt.extensions):
            return fmt
    return None

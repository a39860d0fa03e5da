"""The ``%%greenmeter`` cell magic for Jupyter and IPython: ``%load_ext greenmeter``.

Load it once, then measure a cell::

    %load_ext greenmeter

    %%greenmeter --name train --samples 1000 --store runs.db --as train_energy
    for batch in loader:
        step(batch)

The cell runs under :func:`greenmeter.measure` in the notebook's own namespace (its variables stay
defined), and its :class:`~greenmeter.Measurement` is shown as a table with provenance and bands. The
measurement is left in the notebook's namespace for the next cell: always as ``_greenmeter``, and also
under the name given by ``--as``. Options:

* ``--name NAME``: the window's (and the stored run's) name; default ``cell``;
* ``--samples N``: samples processed in the cell, for joules per sample;
* ``--store PATH``: keep the cell as a run in that run store (``--store default`` for the default store:
  ``$GREENMETER_STORE``, else ``$XDG_DATA_HOME/greenmeter/runs.db``); default: not stored;
* ``--as VAR``: also bind the measurement to ``VAR``;
* ``--quiet``: do not show the measurement.

An exception in the cell is recorded as a failed measurement (and the stored run ends ``failed``, or
``interrupted`` for Ctrl-C), then raised as the cell's error; ``_greenmeter`` still holds the measurement.

This module imports IPython; :func:`greenmeter.load_ipython_extension` imports it only when IPython loads
the extension, so ``import greenmeter`` does not import IPython.
"""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from greenmeter._checks import whole_number
from greenmeter._errors import ConfigError

__all__ = ["RESULT_NAME", "GreenmeterMagics", "load_ipython_extension"]

#: The notebook variable that holds the last ``%%greenmeter`` cell's measurement.
RESULT_NAME = "_greenmeter"


@magics_class
class GreenmeterMagics(Magics):
    """The ``%%greenmeter`` cell magic (see the module docstring)."""

    @magic_arguments()
    @argument("--name", default="cell", help="the window's and the stored run's name (default: cell)")
    @argument("--samples", default=None, help="samples processed in the cell, for joules per sample")
    @argument("--store", default=None,
              help="keep the cell as a run in this run store (a path, or 'default' for the default store)")
    @argument("--as", dest="variable", default=None, help="also bind the measurement to this variable")
    @argument("--quiet", action="store_true", help="do not show the measurement")
    @cell_magic
    def greenmeter(self, line: str, cell: str) -> Any:
        """Run the cell under ``greenmeter.measure``, show its measurement and keep it for the next cell.

        Returns:
            The cell's :class:`~greenmeter.Measurement` (shown as the cell's output), or ``None`` with
            ``--quiet``.

        Raises:
            ConfigError: a bad option (a ``--samples`` that is not a whole number >= 1, an ``--as`` that is
                not a Python identifier).
            BaseException: whatever the cell raised, unchanged, after its measurement was kept.
        """
        from greenmeter.metering.api import measure

        args = parse_argstring(self.greenmeter, line)
        samples = None if args.samples is None else whole_number("--samples", _int(args.samples), minimum=1)
        if args.variable is not None and not str(args.variable).isidentifier():
            raise ConfigError(f"--as must name a Python variable, not {args.variable!r}")
        store: Any = True if args.store == "default" else args.store
        code = self.shell.transform_cell(cell)  # %magics and !commands inside the cell work as in any cell
        block = measure(args.name, samples=samples, store=store)
        try:
            with block:
                self.shell.ex(code)
        finally:
            measurement = None if block.window is None else block.window.measurement
            if measurement is not None:
                self.shell.user_ns[RESULT_NAME] = measurement
                if args.variable is not None:
                    self.shell.user_ns[args.variable] = measurement
        return None if args.quiet else measurement


def _int(text: str) -> Any:
    """``text`` as an int when it is one (``whole_number`` then checks the range), else as given."""
    try:
        return int(text)
    except ValueError:
        return text


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%greenmeter`` with an IPython shell (what ``%load_ext greenmeter`` calls).

    Args:
        ipython: the running ``InteractiveShell``.
    """
    ipython.register_magics(GreenmeterMagics)

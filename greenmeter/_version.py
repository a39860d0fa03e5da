"""The single source of greenmeter's version (read by pyproject.toml and ``greenmeter.__version__``)."""

__version__ = "0.1.0"

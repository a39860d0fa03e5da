"""Comparison: ``compare()`` and its steps, recipes, model facts, statistics-backed recommendation and TOML config.

The package is named ``comparison`` rather than ``compare`` because ``greenmeter.compare`` is the public
verb: a subpackage of that name would replace the function on ``import greenmeter.compare.x``.
"""

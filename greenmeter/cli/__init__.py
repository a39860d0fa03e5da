"""The ``greenmeter`` command line: ``main`` parses and dispatches, ``commands`` and ``report`` run the verbs."""

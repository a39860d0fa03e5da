"""``greenmeter demo``: the whole loop on the bundled digits task (``digits``) in one command (``run``)."""

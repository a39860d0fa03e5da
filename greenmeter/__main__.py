"""``python -m greenmeter`` runs the command line."""

from __future__ import annotations

import sys

from greenmeter.cli.main import main

sys.exit(main())

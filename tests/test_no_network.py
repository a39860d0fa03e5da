"""greenmeter makes no network call: a full measure, store and export cycle with sockets blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys

def refuse(event, args):
    if event in ("socket.__new__", "socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
                 "urllib.Request", "http.client.connect"):
        raise RuntimeError(f"network use attempted: {event} {args!r:.80}")

sys.addaudithook(refuse)

import greenmeter
from greenmeter.output.export import export_runs
from greenmeter.store.database import Store

store = Store(sys.argv[1])
run_id = store.start_run(name="offline", kind="api", host=greenmeter.default_meter().host)
with greenmeter.measure("infer", samples=10, country="FR", pue=1.1) as m:
    sum(i * i for i in range(200_000))
store.add_window(run_id, m.measurement, carbon=m.measurement.carbon)
store.finish_run(run_id, status="ok", measurement=m.measurement, carbon=m.measurement.carbon)
run = store.get_run(run_id)
for fmt in ("csv", "json", "codecarbon", "model-card"):
    assert export_runs([run], fmt).strip(), fmt
store.close()
print("offline cycle ok", round(m.measurement.carbon.co2e_g, 12) > 0)
"""


def test_measure_store_export_cycle_with_sockets_blocked(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "runs.db")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "offline cycle ok True"


def test_the_audit_hook_really_blocks_sockets() -> None:
    code = SCRIPT.split("import greenmeter")[0] + "import socket\nsocket.socket()\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "network use attempted: socket.__new__" in out.stderr

"""examples/cluster/run.py runs as its docstring says: NATS, three hubs, clients on each, a failover."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nats")

try:
    from cluster_tools import nats_server_binary
except ImportError:  # tests/ is a package
    from tests.cluster_tools import nats_server_binary

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def test_the_cluster_example_runs() -> None:
    nats_server_binary()  # skips without one
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "examples/cluster/run.py"], capture_output=True, text=True, timeout=100, cwd=ROOT, env=env
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.count("joined the cluster") == 3
    assert "dashboard: peers ['shard-0', 'shard-1', 'shard-2']" in out
    assert "dashboard: total guilds 303 from ['shard-0', 'shard-1', 'shard-2']" in out
    for index in range(3):
        assert f"shard-{index}: inform from dashboard: hello from the dashboard" in out
    assert "shard-0: ready again on the next hub" in out
    assert "dashboard: shard-0 answers {'shard': 0, 'guilds': 100} after the move" in out
    assert out.rstrip().endswith("done")

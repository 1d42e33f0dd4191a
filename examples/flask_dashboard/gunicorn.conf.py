"""gunicorn settings for the Flask dashboard: ``gunicorn -c examples/flask_dashboard/gunicorn.conf.py``.

Each worker starts its own winerp client right after the fork (a client started in the
master would be useless in the workers: winerp refuses calls on a client from another
process). ``--preload`` is fine too: the app module is then imported in the master, and the
client is still started here, in each worker.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)  # so that "app" is found whatever the working directory

wsgi_app = "app:app"
bind = os.environ.get("DASHBOARD_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("DASHBOARD_WORKERS", "2"))
worker_class = "sync"
timeout = 30
control_socket_disable = True  # gunicorn 24+: no control socket in the home directory (ignored by older ones)


def post_fork(server: Any, worker: Any) -> None:
    import app

    import winerp

    try:
        client = app.ipc()  # dashboard-<this worker's pid>
    except winerp.WinerpError as exc:
        # Boot anyway: the pages answer 503 and try again until the hub is there.
        server.log.warning("worker %s: no winerp hub yet: %s", worker.pid, exc)
    else:
        server.log.info("worker %s: winerp client %s ready", worker.pid, client.name)


def worker_exit(server: Any, worker: Any) -> None:
    import app

    app.close_ipc()

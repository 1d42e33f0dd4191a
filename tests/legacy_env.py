"""A virtualenv with the real winerp 1.5.0, built on demand, for interop tests and benchmarks.

winerp 1.5.0 cannot share an environment with winerp 2 (both are the ``winerp`` package),
and it needs ``websockets<14`` (with 14 and later its ``request`` raises AttributeError), so
it lives in its own virtualenv under the repository's ``.legacy-venv/`` (gitignored)::

    from tests.legacy_env import legacy_python, LegacyEnvUnavailable

    try:
        python = legacy_python()      # builds once (a few seconds, needs PyPI), then instant
    except LegacyEnvUnavailable as exc:
        ...                           # no network, no venv module: skip, or fail in CI
    subprocess.run([python, "-I", "my_legacy_script.py"], env=legacy_environ(), cwd=elsewhere)

The build is idempotent: a stamp file records the pins it was built with, and a later call
whose pins match returns at once. Concurrent callers (pytest-xdist workers, a benchmark
running next to the tests) are serialised with a lock file. ``WINERP_LEGACY_VENV`` moves
the virtualenv elsewhere. Run ``python tests/legacy_env.py`` to build it by hand and print
its interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LEGACY_REQUIREMENTS", "LegacyEnvUnavailable", "legacy_environ", "legacy_python", "legacy_venv_dir"]

#: What the virtualenv holds: winerp 1.5.0 unmodified, and the last websockets it works with.
LEGACY_REQUIREMENTS: tuple[str, ...] = ("winerp==1.5.0", "websockets==13.1")

_REPO_ROOT = Path(__file__).resolve().parent.parent
_STAMP = "winerp-legacy.json"
_BUILD_TIMEOUT = 600.0


class LegacyEnvUnavailable(RuntimeError):
    """The winerp 1.5.0 virtualenv cannot be built here (no network, no ``venv`` ...)."""


def legacy_venv_dir() -> Path:
    """Where the virtualenv lives: ``$WINERP_LEGACY_VENV`` or ``<repo>/.legacy-venv/env``.

    Its parent directory also holds the build lock.
    """
    configured = os.environ.get("WINERP_LEGACY_VENV")
    return Path(configured).resolve() if configured else _REPO_ROOT / ".legacy-venv" / "env"


def _interpreter(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _wanted_stamp() -> dict[str, object]:
    return {"requirements": list(LEGACY_REQUIREMENTS), "python": list(sys.version_info[:2])}


def _is_built(venv: Path) -> bool:
    try:
        stamp = json.loads((venv / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return bool(stamp == _wanted_stamp() and _interpreter(venv).exists())


@contextlib.contextmanager
def _build_lock(venv: Path) -> Iterator[None]:
    """Hold an exclusive lock next to the virtualenv (a no-op where fcntl is missing)."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(venv.parent / f"{venv.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], what: str) -> None:
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT,
            check=False,
            cwd=legacy_venv_dir().parent,  # never the repository: its winerp would shadow 1.5.0
            env=legacy_environ(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LegacyEnvUnavailable(f"{what} failed: {exc}") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise LegacyEnvUnavailable(f"{what} failed (exit {result.returncode}): " + " | ".join(output[-5:]))


def legacy_environ() -> dict[str, str]:
    """The environment to run the legacy interpreter in: this one minus ``PYTHONPATH``.

    Run it with ``-I`` too (and a working directory outside the repository), so that the
    winerp 2 package under test can never be imported in place of winerp 1.5.0.
    """
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}


def legacy_python() -> str:
    """Return the interpreter of the winerp 1.5.0 virtualenv, building it first if needed.

    Raises:
        LegacyEnvUnavailable: it is not built and cannot be (the message says why).
    """
    venv = legacy_venv_dir()
    if _is_built(venv):
        return str(_interpreter(venv))
    with _build_lock(venv):
        if _is_built(venv):  # another process built it while we waited
            return str(_interpreter(venv))
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "creating the winerp 1.5.0 virtualenv")
        python = str(_interpreter(venv))
        _run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *LEGACY_REQUIREMENTS],
            f"pip install {' '.join(LEGACY_REQUIREMENTS)}",
        )
        # Check it is the real thing before stamping it as built.
        check = "import websockets, winerp; assert websockets.__version__ == '13.1'; winerp.Client, winerp.Server"
        _run([python, "-I", "-c", check], "importing winerp 1.5.0")
        (venv / _STAMP).write_text(json.dumps(_wanted_stamp()))
        print(f"built the winerp 1.5.0 virtualenv in {time.monotonic() - started:.1f} s: {venv.name}/", file=sys.stderr)
        return python


if __name__ == "__main__":
    try:
        print(legacy_python())
    except LegacyEnvUnavailable as exc:
        sys.exit(f"legacy_env: {exc}")

"""Windows and macOS: no POSIX-only module or path in our code, checked by running it without them.

Game developers run the sidecar on Windows and macOS. A child process imports every
module of ours with ``fcntl`` and ``resource`` made unimportable and every read
under ``/proc`` refused (as on Windows), then takes the batch output lock twice and
installs the stop signals on an event loop without ``add_signal_handler`` (as
asyncio's Proactor loop on Windows).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lore", "narrative", "bridge", "app")

CHILD = textwrap.dedent(
    r'''
    import builtins, importlib, importlib.abc, io, os, pkgutil, sys, tempfile
    from pathlib import Path

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in ("fcntl", "resource"):
                raise ImportError(f"{name} is POSIX-only (blocked by test_portability)")
            return None

    sys.modules.pop("fcntl", None)
    sys.modules.pop("resource", None)
    sys.meta_path.insert(0, Block())
    real_open = builtins.open

    def no_proc(file, *a, **kw):
        if str(file).startswith("/proc"):
            raise OSError(f"{file}: no /proc here (blocked by test_portability)")
        return real_open(file, *a, **kw)

    builtins.open = io.open = no_proc
    imported = []
    for pkg in ("lore", "narrative", "bridge", "app"):
        mod = importlib.import_module(pkg)
        imported.append(pkg)
        for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
            if info.name.endswith(".__main__"):
                continue  # runs the CLI
            importlib.import_module(info.name)
            imported.append(info.name)
    assert "fcntl" not in sys.modules, "something imported fcntl"

    # the batch output lock works and refuses a second holder
    from narrative.batch import runner
    from filelock import FileLock, Timeout
    d = Path(tempfile.mkdtemp())
    a = FileLock(d / ".lock"); a.acquire(timeout=0)
    try:
        FileLock(d / ".lock").acquire(timeout=0)
        raise SystemExit("second lock acquired")
    except Timeout:
        pass
    a.release()

    # the memory budget: no /proc, no crash (None or a figure from psutil)
    from narrative.presets import detect_budget
    budget, where = detect_budget(False)
    assert where == "RAM" and (budget is None or budget > 0), (budget, where)

    # stop signals on a loop without add_signal_handler (asyncio's Proactor loop on Windows)
    import asyncio, signal
    from bridge.server import install_stop_signals

    class ProactorLike(asyncio.SelectorEventLoop):
        def add_signal_handler(self, *a):
            raise NotImplementedError

    loop = ProactorLike()
    stopped = []
    handled = install_stop_signals(loop, stopped.append)
    assert "SIGINT" in handled, handled
    signal.raise_signal(signal.SIGINT)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert stopped == ["SIGINT"], stopped
    print(len(imported), "modules")
    '''
)


def test_every_module_imports_and_runs_without_fcntl_or_proc():
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(r.stdout.split()[0]) > 40


def test_no_posix_only_import_or_path_in_the_source():
    """The static half: no ``import fcntl``/``resource``/``termios`` and no ``/proc/`` string in our packages."""
    bad = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for node in ast.walk(ast.parse(text)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                bad += [f"{path.relative_to(ROOT)}: import {n}" for n in names if n.split(".")[0] in ("fcntl", "resource", "termios")]
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/proc/" in node.value and path.name != "test_portability.py":
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: reads /proc")
    assert not bad, bad

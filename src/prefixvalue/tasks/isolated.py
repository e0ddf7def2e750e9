"""User verifier functions run in a worker process, so that a time limit really stops them.

A verifier named ``module:function`` or ``path/to/file.py:function`` (anything but a built-in
registered name) is user code: it may loop forever or crash the interpreter. `VerifierPool` runs it in
a worker: a fresh ``python -c`` subprocess (not a multiprocessing fork of a parent that holds a model
and threads, and not a spawn that would re-run the user's ``__main__`` script). The parent sends one
(completion, answer) at a time over a socket pair and waits up to the time limit; past it the worker
is killed (SIGKILL) and a warm spare takes over while another spare starts, so a verifier that never
returns costs about its limit, and the parent's GIL stays free. A worker that dies (``os._exit``, a
segfault) scores that completion 0 with the error recorded and is replaced likewise. The worker
imports the function by its reference with the parent's ``sys.path`` and working directory (file
paths made absolute); its ``print`` output goes to stderr.

Cost, measured on a 2-core CPU machine (docs/design.md, "Verifiers"): see `OVERHEAD`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any

from .base import VerifierResult, _checked

#: seconds a new worker may take to start and import the user function before its verification counts
#: as failed (not part of the per-verification limit: a slow import is not a slow verifier)
START_TIMEOUT_S = 120.0

#: measured cost of the worker path (docs/design.md, "Verifiers")
OVERHEAD = (
    "about 0.13 ms per verification over a direct call (the in-process thread: 0.28 ms); about 0.15 s to start a worker"
)

_WORKER_CODE = "import sys; from prefixvalue.tasks.isolated import _worker_main; _worker_main(int(sys.argv[1]))"


def portable_spec(spec: str) -> str:
    """`spec` with a file path made absolute, so that a worker resolves it as the parent did."""
    target, sep, attr = spec.rpartition(":")
    if sep and (target.endswith(".py") or "/" in target or "\\" in target):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return spec


def _worker_main(fd: int) -> None:
    """Worker loop: import the function, say ready, then answer (completion, answer) messages until EOF."""
    from .verifiers import load_function

    os.dup2(2, 1)  # a print in the user function must not reach the parent's stdout
    try:  # Linux: die with the parent, so a spinning verifier is not left behind if the parent is killed
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass
    conn = Connection(fd)
    spec, options, sys_path = conn.recv()
    sys.path[:] = sys_path
    try:
        fn = load_function(spec)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which records it
        conn.send(("fail", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        completion, answer = msg
        try:
            out: tuple[str, Any] = ("ok", _checked(fn(completion, answer, **options)))
        except BaseException as exc:  # noqa: BLE001 - any verifier failure is recorded, not raised
            out = ("err", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(out)
        except Exception as exc:  # noqa: BLE001 - e.g. details that cannot be pickled
            conn.send(("err", f"verifier result cannot be sent back: {type(exc).__name__}: {exc}"))


class _Worker:
    """One started worker process (it imports the function while the parent goes on)."""

    def __init__(self, spec: str, options: dict[str, Any]) -> None:
        self.conn, child = Pipe()  # a socket pair
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, env.get("PYTHONPATH", "")] if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(child.fileno())],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            cwd=os.getcwd(),
            env=env,
        )
        child.close()
        self.conn.send((spec, options, list(sys.path)))
        self.ready = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.wait(1.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _shutdown(box: list[_Worker | None]) -> None:
    for i, w in enumerate(box):
        if w is not None:
            w.stop()
            box[i] = None


class VerifierPool:
    """Worker processes running the user verifier `spec` with `options`: one at work, and after the first
    time-out or crash one warm spare, so a killed worker is replaced at once. Thread-safe (calls are
    serialised); the first worker starts on the first verification."""

    def __init__(self, spec: str, options: dict[str, Any] | None = None) -> None:
        self.spec = portable_spec(spec)
        self.options = dict(options or {})
        self._lock = threading.Lock()
        self._box: list[_Worker | None] = [None, None]  # [at work, spare] (a list, so the finalizer sees it)
        self.restarts = 0  # workers replaced after a time-out or a crash
        weakref.finalize(self, _shutdown, self._box)

    def _replace(self) -> None:
        """Drop the worker at work: the spare (if any) takes over, and a new spare starts."""
        w = self._box[0]
        if w is not None:
            w.kill()
        self.restarts += 1
        spare = self._box[1]
        self._box[0] = spare if spare is not None and spare.alive() else _Worker(self.spec, self.options)
        self._box[1] = _Worker(self.spec, self.options)

    def _ready(self) -> _Worker | str:
        """The worker at work, started and with the function imported, or the reason it could not be."""
        w = self._box[0]
        if w is None:
            w = self._box[0] = _Worker(self.spec, self.options)
        elif not w.alive():
            self._replace()
            w = self._box[0]
        assert w is not None
        if w.ready:
            return w
        if not w.conn.poll(START_TIMEOUT_S):
            w.kill()
            self._box[0] = None
            return f"verifier worker did not start within {START_TIMEOUT_S:g}s"
        try:
            kind, payload = w.conn.recv()
        except (EOFError, OSError):
            kind, payload = "fail", f"exited with code {w.proc.poll()} while starting"
        if kind != "ready":
            w.kill()
            self._box[0] = None
            return f"verifier worker could not load {self.spec}: {payload}"
        w.ready = True
        return w

    def verify(self, completion: str, answer: str, timeout_s: float | None) -> VerifierResult:
        """Score `completion` against `answer` in the worker; a crash, a death or a time-out gives score 0
        with the error recorded (the worker is then replaced). Returns a VerifierResult."""
        with self._lock:
            w = self._ready()
            if isinstance(w, str):
                return VerifierResult(0.0, error=f"RuntimeError: {w}")
            try:
                w.conn.send((completion, answer))
                if not w.conn.poll(timeout_s):
                    self._replace()  # SIGKILL: the only way to stop code that never yields
                    return VerifierResult(0.0, error=f"TimeoutError: verifier exceeded {timeout_s:g}s")
                kind, payload = w.conn.recv()
            except (EOFError, OSError):
                try:
                    code = w.proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    code = None
                self._replace()
                return VerifierResult(0.0, error=f"RuntimeError: verifier worker died (exit code {code})")
        if kind == "ok":
            return payload
        return VerifierResult(0.0, error=payload)

    def close(self) -> None:
        """Stop the workers (also done when the pool is garbage-collected or the interpreter exits)."""
        with self._lock:
            _shutdown(self._box)


__all__ = ["OVERHEAD", "VerifierPool", "portable_spec"]

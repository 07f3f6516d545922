"""The emulator in a child process, with the same control API as :class:`NetemProxy`."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Listener
from typing import Any

from edgeinfer.errors import InputError
from edgeinfer.netem._endpoint import _Endpoint
from edgeinfer.netem.conditions import Conditions, NetemStats, OutageMode, parse_address
from edgeinfer.netem.proxy import NetemProxy

__all__ = ["NetemProcess"]

_CHILD = "from edgeinfer.netem.process import _child_main; _child_main()"


def _child_main() -> None:
    """Entry point of :class:`NetemProcess`'s child: argv is the parent's ``HOST:PORT``; the
    key comes on stdin, since any local user can read a process's argv (and environment is
    readable by the same user and inherited by what it starts)."""
    from multiprocessing.connection import Client

    host, _, port = sys.argv[1].rpartition(":")
    key = bytes.fromhex(sys.stdin.readline().strip())
    sys.stdin.close()
    conn = Client((host, int(port)), authkey=key)
    target, listen, seed, cond = conn.recv()
    try:
        proxy = NetemProxy(target, listen, seed=seed).start()
        proxy.conditions = cond
    except BaseException as exc:  # reported to the parent
        conn.send(("error", exc))
        return
    conn.send(("ok", proxy.port))
    try:
        while True:
            op, args, kwargs = conn.recv()
            try:
                if op == "stop":
                    break
                if op == "get":
                    result: Any = getattr(proxy, args[0])
                else:
                    result = getattr(proxy, op)(*args, **kwargs)
            except Exception as exc:
                conn.send(("error", exc))
            else:
                conn.send(("ok", result))
    except (EOFError, OSError):
        pass  # the parent went away
    finally:
        proxy.stop()
        conn.close()


class NetemProcess(_Endpoint):
    """A :class:`NetemProxy` in a child process, with the same control API.

    Benchmarks use it so that the emulated link never waits for the interpreter lock of
    the process it is measuring (and the measured process never waits for the link's).
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        listen: str | tuple[str, int] = "127.0.0.1:0",
        *,
        seed: int | None = None,
        **conditions: Any,
    ) -> None:
        host, port = parse_address(target)
        self.target = (host, port)
        self._listen = parse_address(listen)
        self._seed = seed
        self._initial = Conditions.of(None, **conditions)
        self._conn: Any = None
        self._proc: Any = None
        self._port = 0
        self._lock = threading.Lock()

    def start(self) -> NetemProcess:
        if self._proc is not None:
            return self
        key = secrets.token_bytes(16)
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            host, port = listener.address
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, f"{host}:{port}"], stdin=subprocess.PIPE
            )
            # The key goes over a pipe only the child holds: never in its argv, which
            # /proc/PID/cmdline shows to every local user (who could then send this
            # process pickles to load).
            stdin = self._proc.stdin
            with contextlib.suppress(OSError):  # a child that died is reported by _accept
                stdin.write(key.hex().encode() + b"\n")
                stdin.close()
            self._conn = self._accept(listener)
        self._conn.send(
            (
                f"{self.target[0]}:{self.target[1]}",
                f"{self._listen[0]}:{self._listen[1]}",
                self._seed,
                self._initial,
            )
        )
        status, value = self._conn.recv()
        if status == "error":
            self.stop()
            raise value
        self._port = int(value)
        return self

    def _accept(self, listener: Any) -> Any:
        """The child's connection; a clear error if the child dies or never calls."""
        got: list[Any] = []

        def accept() -> None:
            with contextlib.suppress(OSError, EOFError):
                got.append(listener.accept())

        waiter = threading.Thread(target=accept, daemon=True)
        waiter.start()
        deadline = time.monotonic() + 60.0
        while waiter.is_alive() and time.monotonic() < deadline:
            waiter.join(0.05)
            if self._proc.poll() is not None and not got:
                break
        if not got:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            raise InputError("the netem process did not start (see its stderr)")
        return got[0]

    def _ask(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if self._conn is None:
            raise InputError("the netem process is not running; call start() first")
        try:
            with self._lock:
                self._conn.send((op, args, kwargs))
                status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise InputError(f"the netem process is gone: {exc!r}") from None
        if status == "error":
            raise value
        return value

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._conn is not None:
            with contextlib.suppress(OSError), self._lock:
                self._conn.send(("stop", (), {}))
            self._conn.close()
        try:
            self._proc.wait(10)
        except Exception:
            self._proc.kill()
            self._proc.wait()
        self._proc = self._conn = None

    def set(self, **changes: Any) -> Conditions:
        """Change the link now (as :meth:`NetemProxy.set`)."""
        Conditions.of(self._initial, **changes)  # bad values fail here, with their message
        result: Conditions = self._ask("set", **changes)
        return result

    def outage(
        self, seconds: float | None, *, after: float = 0.0, mode: OutageMode = "blackhole"
    ) -> None:
        self._ask("outage", seconds, after=after, mode=mode)

    def restore(self) -> None:
        self._ask("restore")

    @property
    def conditions(self) -> Conditions:
        result: Conditions = self._ask("get", "conditions")
        return result

    @property
    def stats(self) -> NetemStats:
        result: NetemStats = self._ask("get", "stats")
        return result

    @property
    def in_outage(self) -> bool:
        return bool(self._ask("get", "in_outage"))

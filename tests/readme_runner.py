"""Run every fenced ``python`` and ``bash`` block of the README, in order, in one folder.

``python readme_runner.py README.md WORKDIR``: Python blocks share one namespace, as if
typed into one session; bash blocks run line by line (``\\`` continues a line) with this
interpreter's ``bin`` first on ``PATH`` and ``HOME`` set to WORKDIR. A command ending in
``&`` is started in the background and stopped at the end, once the port it listens on
(``--port N``, a trailing port number, or ``edgeinfer serve``'s 8000) accepts connections.
``NAME=VALUE`` sets ``$NAME`` for the lines after it, as in one shell.

A README line ``# SomeError: ...`` right after a one-line statement documents that the
statement raises ``edgeinfer.SomeError``; the runner checks that it does. The opening
block (``make demo`` / ``make test``) is not run here: the tests check it against
``.ci/run`` and the Makefile instead, and CI runs it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.MULTILINE | re.DOTALL)
RAISES = re.compile(r"^# (\w+Error):")
ASSIGN = re.compile(r"^([A-Za-z_]\w*)=(\S.*)$")


def blocks(readme: str) -> list[tuple[str, str]]:
    """The README's ``(language, code)`` blocks, the opening make block left out."""
    found = [(m.group(1), m.group(2)) for m in FENCE.finditer(readme)]
    return [(lang, code) for lang, code in found if "make test" not in code]


def with_raises(code: str) -> str:
    """Turn ``stmt`` + ``# XError: ...`` into a check that ``stmt`` raises ``XError``."""
    lines = code.splitlines()
    out: list[str] = []
    for line in lines:
        m = RAISES.match(line)
        if m is None:
            out.append(line)
            continue
        k = len(out) - 1
        while k >= 0 and (not out[k].strip() or out[k].lstrip().startswith("#")):
            k -= 1
        stmt = out[k]
        out[k : k + 1] = [
            "try:",
            f"    {stmt}",
            f"except __import__('edgeinfer').{m.group(1)} as _readme_exc:",
            "    print('raised as documented:', _readme_exc)",
            "else:",
            f"    raise SystemExit({('README: expected ' + m.group(1) + ' from: ' + stmt)!r})",
        ]
        out.append(line)
    return "\n".join(out) + "\n"


def logical_lines(code: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", code)
    return [ln for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _uncommented(line: str) -> str:
    return re.sub(r"\s+#\s[^'\"]*$", "", line).rstrip()


def _ports(cmd: str) -> list[int]:
    ports = [int(p) for p in re.findall(r"--port[ =](\d+)", cmd)]
    if not ports and re.search(r"\s(\d{2,5})$", cmd):
        ports = [int(cmd.rsplit(None, 1)[1])]
    if not ports and "edgeinfer serve" in cmd:
        ports = [8000]
    return ports


def _wait_for(ports: list[int], proc: subprocess.Popen[bytes], cmd: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"README: background command exited ({proc.returncode}): {cmd}")
        try:
            with socket.create_connection(("127.0.0.1", ports[0]), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"README: nothing listens on port {ports[0]} after 120 s: {cmd}")


def main(readme_path: str, workdir: str) -> int:
    text = Path(readme_path).read_text(encoding="utf-8")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    env = dict(os.environ)
    env["HOME"] = str(work)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    os.environ.update(env)
    background: list[subprocess.Popen[bytes]] = []
    namespace: dict[str, object] = {"__name__": "__readme__"}
    try:
        for n, (lang, code) in enumerate(blocks(text), start=1):
            print(f"--- README block {n} ({lang})", flush=True)
            if lang == "python":
                exec(compile(with_raises(code), f"<README block {n}>", "exec"), namespace)
                continue
            for line in logical_lines(code):
                cmd = _uncommented(line)
                print(f"$ {cmd}", flush=True)
                if m := ASSIGN.match(cmd):  # NAME=... holds for the block's later lines
                    value = subprocess.run(
                        ["bash", "-c", f"printf %s {m.group(2)}"],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    env[m.group(1)] = value
                    continue
                if cmd.endswith("&"):
                    cmd = cmd[:-1].rstrip()
                    proc = subprocess.Popen(["bash", "-c", cmd], env=env, start_new_session=True)
                    background.append(proc)
                    if ports := _ports(cmd):
                        _wait_for(ports, proc, cmd)
                    continue
                done = subprocess.run(["bash", "-c", cmd], env=env, timeout=900)
                if done.returncode != 0:
                    raise SystemExit(f"README: exit code {done.returncode} from: {cmd}")
    finally:
        for proc in background:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in background:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    print("--- README: every block ran", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

"""The network emulator's fidelity: the rate a bulk transfer gets through ``NetemProxy``.

Every network benchmark (offload, split) trusts the emulator to give the link it was told
to; this checks that it does. A TCP sink on 127.0.0.1 drains what the proxy forwards; the
client sends ``--megabytes`` through the proxy (RTT 0) at each rate and times the transfer
until the sink's one-byte reply, ``--repeats`` times, median kept. Reported: achieved
Mbit/s and achieved / configured (target: within 5% up to 100 Mbit/s).

Run: .venv/bin/python benchmarks/bench_netem.py [--megabytes 8] [--repeats 3]
Writes benchmarks/results/netem.json.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

RATES_MBIT = (1.0, 10.0, 50.0, 100.0, 200.0)


def sink() -> int:
    """A TCP server that reads each connection to its end, then answers one byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def drain(c: socket.socket) -> None:
        with c:
            while c.recv(1 << 20):
                pass
            c.sendall(b"k")

    def accept() -> None:
        while True:
            c, _ = srv.accept()
            threading.Thread(target=drain, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(srv.getsockname()[1])


def transfer_s(url: str, nbytes: int) -> float:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    payload = b"\0" * nbytes
    with socket.create_connection((host, int(port))) as s:
        start = time.perf_counter()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--megabytes", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from edgeinfer.netem import NetemProxy

    port = sink()
    rows = []
    for mbit in RATES_MBIT:
        # at least ~1 s per transfer at the slow rates, the full size at the fast ones
        nbytes = int(min(args.megabytes * 1e6, mbit * 1e6 / 8 * 2))
        with NetemProxy(f"127.0.0.1:{port}", rtt=0.0, rate=f"{mbit:g}mbit") as proxy:
            times = [transfer_s(proxy.url, nbytes) for _ in range(args.repeats)]
        achieved = nbytes * 8 / statistics.median(times) / 1e6
        row = {
            "rate_mbit": mbit,
            "bytes": nbytes,
            "seconds": times,
            "achieved_mbit": round(achieved, 2),
            "achieved_over_configured": round(achieved / mbit, 3),
        }
        rows.append(row)
        print(f"{mbit:>6g} Mbit/s: {achieved:7.1f} achieved ({achieved / mbit:.3f})", flush=True)
    within = all(
        abs(r["achieved_over_configured"] - 1) <= 0.05 for r in rows if r["rate_mbit"] <= 100
    )
    path = write(
        "netem",
        {
            "setup": {"rtt_s": 0.0, "repeats": args.repeats, "megabytes_max": args.megabytes},
            "rates": rows,
            "summary": {"within_5pct_up_to_100mbit": within},
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

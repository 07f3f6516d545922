"""``edgeinfer netem``: put an emulated network link in front of a server.

::

    edgeinfer netem --listen 127.0.0.1:9000 --target 127.0.0.1:8000 --rtt 50ms --rate 10mbit

Clients that connect to ``--listen`` reach ``--target`` through a link with that round-trip
time, bandwidth, jitter and connection loss (see :mod:`edgeinfer.netem` for how each is
emulated in user space). Runs until Ctrl-C, or for ``--duration``.
"""

from __future__ import annotations

import time
from typing import Any

import typer


def netem(
    target: str = typer.Option(..., help="The real server, HOST:PORT."),
    listen: str = typer.Option("127.0.0.1:9000", help="Where clients connect, HOST:PORT."),
    rtt: str = typer.Option("0ms", help="Round-trip time added, e.g. 50ms."),
    rate: str | None = typer.Option(None, help="Bandwidth each way, e.g. 10mbit (default: none)."),
    rate_up: str | None = typer.Option(None, help="Bandwidth client -> server only."),
    rate_down: str | None = typer.Option(None, help="Bandwidth server -> client only."),
    jitter: str = typer.Option("0ms", help="Delay variation per chunk, e.g. 5ms."),
    loss: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Probability per forwarded chunk that the connection is reset."
    ),
    duration: float | None = typer.Option(
        None, min=0.0, help="Stop after this many seconds (default: run until Ctrl-C)."
    ),
) -> None:
    """Emulate a network link (latency, bandwidth, jitter, loss) in front of a TCP server."""
    from edgeinfer.netem import Conditions, NetemProxy

    changes: dict[str, Any] = {"rtt": rtt, "jitter": jitter, "loss": loss}
    if rate is not None:
        changes["rate"] = rate
    if rate_up is not None:
        changes["rate_up"] = rate_up
    if rate_down is not None:
        changes["rate_down"] = rate_down
    Conditions.of(None, **changes)  # bad values are reported before anything listens
    proxy = NetemProxy(target, listen, **changes)
    with proxy:
        c = proxy.conditions
        up = "unlimited" if c.rate_up is None else f"{c.rate_up / 1e6:g} Mbit/s"
        down = "unlimited" if c.rate_down is None else f"{c.rate_down / 1e6:g} Mbit/s"
        typer.echo(
            f"netem: {proxy.address} -> {proxy.target[0]}:{proxy.target[1]}  rtt "
            f"{c.rtt * 1e3:g} ms, jitter {c.jitter * 1e3:g} ms, up {up}, down {down}, "
            f"loss {c.loss:g}"
        )
        try:
            if duration is not None:
                time.sleep(duration)
            else:
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass
        s = proxy.stats
        typer.echo(
            f"netem: {s.connections} connections, {s.bytes_up} bytes up, "
            f"{s.bytes_down} bytes down, {s.resets} resets"
        )


def register(app: typer.Typer) -> None:
    app.command("netem")(netem)

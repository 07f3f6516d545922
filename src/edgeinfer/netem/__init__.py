"""A user-space network emulator: a TCP proxy on loopback that makes a link slow or broken.

Tests, benchmarks, the demo and ``edgeinfer netem`` put :class:`NetemProxy` between a
client and a real server to give the link a round-trip time, jitter, a bandwidth limit,
connection loss and outages, and change them while traffic flows::

    with NetemProxy("127.0.0.1:8000", rtt=0.05, rate="10mbit") as proxy:
        client = RemoteModel(proxy.url, "digits")
        proxy.set(rate="1mbit")          # live: the next bytes see the new link
        proxy.outage(10.0)               # nothing gets through for 10 s

How each condition is emulated (in user space, so only approximately):

- ``rtt``: every chunk of bytes is delivered ``rtt / 2`` after it was sent, each way.
  ``jitter`` adds a uniform ``[-jitter, +jitter]`` per chunk; bytes never overtake each
  other (a TCP stream cannot reorder). The event loop sleeps with ~1 ms resolution.
- ``rate`` (or ``rate_up``/``rate_down``): one token bucket per direction, shared by every
  connection, as one physical link would be. A chunk waits until the bucket has paid for it
  (``burst`` bytes may pass at once) and the sender is held back meanwhile.
- ``loss``: the probability that forwarding a chunk kills the connection (both sides see a
  reset). Packet loss on a real link is hidden by TCP's retransmission and shows up as
  latency (use ``jitter``); what reaches an application is a dropped connection.
- ``outage``: ``"blackhole"`` holds every byte (new connections are accepted but go
  nowhere) until the outage ends, so clients run into their timeouts; ``"refuse"`` stops
  listening and resets open connections, so clients see "connection refused" at once.

:class:`NetemProcess` runs the same proxy in a child process, with the same control API,
for measurements that must not share an interpreter lock with the link.

:class:`EmulatedDevice` is the device-side counterpart: it makes a local model look
``slowdown`` times slower by sleeping after each call. It is emulation for benchmarks and
the demo, not a measurement of a real device.
"""

from edgeinfer.netem.conditions import (
    Conditions,
    NetemStats,
    OutageMode,
    parse_address,
    parse_duration,
    parse_rate,
)
from edgeinfer.netem.device import EmulatedClient, EmulatedDevice
from edgeinfer.netem.process import NetemProcess
from edgeinfer.netem.proxy import NetemProxy

__all__ = [
    "Conditions",
    "EmulatedClient",
    "EmulatedDevice",
    "NetemProcess",
    "NetemProxy",
    "NetemStats",
    "OutageMode",
    "parse_address",
    "parse_duration",
    "parse_rate",
]

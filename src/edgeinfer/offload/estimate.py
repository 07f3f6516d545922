"""Live estimates the placement policies decide from: what local and remote runs cost now.

Everything here is measured, online, from the requests themselves and from cheap probes:

- local latency per model input signature (the input shapes), with a per-element rate to
  extrapolate to signatures not seen yet;
- per remote: round-trip time (from probes such as the OIP ready endpoint, which carry no
  payload), upload and download bandwidth (from request/response wire sizes and timings),
  server queue + compute time (when the server reports it), wire sizes per signature, and
  the recent success rate.

A single estimate is :class:`RobustEstimate`: the median of the last few samples, smoothed
by an EWMA. The median ignores outliers (a GC pause, one retransmission); the short window
lets it follow a changed network within a handful of requests, which a whole-stream
quantile sketch (P²) would not. Estimates carry their age, so the offloader can refresh
stale ones by probing instead of trusting old numbers.

One call's time cannot say which direction the bytes were slow in. Transfer time is
``total - rtt - server``; it is attributed to upload and download in proportion to their
current predicted shares (so the two keep their ratio, starting equal), and a download
that streams over several reads is timed on its own to correct that ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeinfer.placement import RobustEstimate

__all__ = [
    "LocalEstimates",
    "RateView",
    "RemoteEstimates",
    "RobustEstimate",
    "Signature",
]

Signature = tuple[tuple[int, ...], ...]  # the shapes of a request's inputs, in input order
_MIN_TRANSFER_S = 1e-5  # a transfer faster than this is "unmeasurably fast"


class RateView:
    """A rate (bytes/s) seen through an estimate of its inverse (seconds per byte)."""

    __slots__ = ("_inverse",)

    def __init__(self, inverse: RobustEstimate) -> None:
        self._inverse = inverse

    @property
    def value(self) -> float | None:
        v = self._inverse.value
        return None if not v else 1.0 / v

    @property
    def updated(self) -> float:
        return self._inverse.updated

    @property
    def count(self) -> int:
        return self._inverse.count


@dataclass
class LocalEstimates:
    """Local run time per input signature, and per input element to extrapolate."""

    window: int = 7
    alpha: float = 0.5
    by_signature: dict[Signature, RobustEstimate] = field(default_factory=dict)
    per_element: RobustEstimate = field(default_factory=RobustEstimate)  # seconds/element

    def observe(self, sig: Signature, elements: int, seconds: float, now: float) -> None:
        est = self.by_signature.get(sig)
        if est is None:
            est = self.by_signature[sig] = RobustEstimate(self.window, self.alpha)
        est.add(seconds, now)
        self.per_element.add(seconds / max(elements, 1), now)

    def predict(self, sig: Signature, elements: int) -> float | None:
        """Expected seconds for one local run (``None``: never measured)."""
        est = self.by_signature.get(sig)
        if est is not None and est.value is not None:
            return est.value
        rate = self.per_element.value
        return None if rate is None else rate * elements

    def updated(self, sig: Signature) -> float:
        est = self.by_signature.get(sig)
        return float("-inf") if est is None else est.updated


@dataclass
class _PerSignature:
    up_bytes: int
    down_bytes: int
    server: RobustEstimate
    total: RobustEstimate  # observed end-to-end seconds, for reports
    codec_s: float = 0.0  # this client's (de)compression time on the last call


class RemoteEstimates:
    """What talking to one remote costs now: RTT, bandwidth, server time, success rate."""

    def __init__(self, window: int = 7, alpha: float = 0.5, success_alpha: float = 0.2) -> None:
        self.window, self.alpha = window, alpha
        # seconds, from probes: few and rarely outliers, so a short median that follows a
        # changed link after two probes
        self.rtt = RobustEstimate(3, 1.0)
        # Transfer cost as seconds per byte (the inverse of bandwidth): averaging times, not
        # rates, so a link that slows down 100x moves the estimate halfway in one step.
        self.up_spb = RobustEstimate(window, alpha)  # seconds per byte, client -> server
        self.down_spb = RobustEstimate(window, alpha)  # seconds per byte, server -> client
        self.up_bw = RateView(self.up_spb)  # bytes/s, read-only: .value, .updated, .count
        self.down_bw = RateView(self.down_spb)
        self.server_per_element = RobustEstimate(window, alpha)  # seconds per input element
        self.up_ratio = RobustEstimate(window, alpha)  # wire bytes / raw input bytes
        self.down_ratio = RobustEstimate(window, alpha)  # response wire bytes / request's
        self.success = 1.0  # EWMA of answered (1) vs failed (0), calls and probes alike
        self.success_alpha = success_alpha
        self.last_call = float("-inf")  # clock time of the last answered call
        self.last_contact = float("-inf")  # ... of the last answer of any kind (call or probe)
        self._sigs: dict[Signature, _PerSignature] = {}

    # ------------------------------------------------------------------ updates
    def observe_probe(self, seconds: float, now: float) -> None:
        """A payload-free round trip (ready probe, metadata) took ``seconds``."""
        self.rtt.add(seconds, now)
        self._outcome(True)
        self.last_contact = now

    def observe_failure(self) -> None:
        self._outcome(False)

    def observe_call(
        self,
        sig: Signature,
        elements: int,
        raw_bytes: int,
        up_bytes: int,
        down_bytes: int,
        seconds: float,
        now: float,
        server_s: float | None = None,
        download_s: float | None = None,
        streamed_bytes: int = 0,
        *,
        codec_s: float = 0.0,
        shared: bool = True,
    ) -> None:
        """One answered inference call: wire sizes, total time and what the server reported.

        ``download_s``/``streamed_bytes``: time and size of the part of the response that
        arrived after its first bytes, when it streamed over several reads. ``codec_s``:
        the client's own compression time (HTTP compression): not network time, so it is
        kept out of the bandwidth estimate and added back to this signature's predictions.
        ``shared=False``: a call of another model on this server (a split tail): it teaches
        the link (RTT, bandwidth, success) and its own signature's entry, but not the
        per-element server time and wire ratios used to extrapolate this model's calls.
        """
        entry = self._sigs.get(sig)
        if entry is None:
            entry = _PerSignature(
                up_bytes,
                down_bytes,
                RobustEstimate(self.window, self.alpha),
                RobustEstimate(self.window, self.alpha),
            )
            self._sigs[sig] = entry
        entry.up_bytes, entry.down_bytes = up_bytes, down_bytes
        entry.codec_s = codec = max(codec_s, 0.0)
        entry.total.add(seconds, now)
        server = max(server_s or 0.0, 0.0)
        entry.server.add(server, now)
        if shared:
            self.server_per_element.add(server / max(elements, 1), now)
            self.up_ratio.add(up_bytes / max(raw_bytes, 1), now)
            self.down_ratio.add(down_bytes / max(up_bytes, 1), now)
        if download_s is not None and streamed_bytes > 0 and download_s > _MIN_TRANSFER_S:
            self.down_spb.add(download_s / streamed_bytes, now)
        self._outcome(True)
        self.last_call = self.last_contact = now
        if self.rtt.value is None:
            return  # without the RTT, the transfer time is unknown: wait for a probe
        transfer = max(seconds - self.rtt.value - server - codec, _MIN_TRANSFER_S)
        t_up, t_down = self._transfer_times(up_bytes, down_bytes)
        if t_up <= 0 or t_down <= 0:  # nothing known yet: assume equal bandwidth both ways
            t_up, t_down = float(up_bytes), float(down_bytes)
        share = t_up / max(t_up + t_down, 1e-12)
        self.up_spb.add(max(transfer * share, _MIN_TRANSFER_S) / max(up_bytes, 1), now)
        if download_s is None:
            self.down_spb.add(
                max(transfer * (1 - share), _MIN_TRANSFER_S) / max(down_bytes, 1), now
            )

    def _outcome(self, ok: bool) -> None:
        self.success += self.success_alpha * ((1.0 if ok else 0.0) - self.success)

    def _transfer_times(self, up_bytes: float, down_bytes: float) -> tuple[float, float]:
        up, down = self.up_spb.value, self.down_spb.value
        return (0.0 if up is None else up_bytes * up, 0.0 if down is None else down_bytes * down)

    # ------------------------------------------------------------------ predictions
    def wire_bytes(self, sig: Signature, raw_bytes: int) -> tuple[int, int]:
        """Expected (request, response) wire bytes for a request of this signature."""
        entry = self._sigs.get(sig)
        if entry is not None:
            return entry.up_bytes, entry.down_bytes
        up = int(raw_bytes * (self.up_ratio.value or 1.0)) + 256
        return up, int(up * (self.down_ratio.value or 1.0))

    def predict(self, sig: Signature, elements: int, raw_bytes: int) -> float | None:
        """Expected seconds for one call (``None``: no bandwidth measured yet)."""
        if self.up_spb.value is None:
            return None
        up, down = self.wire_bytes(sig, raw_bytes)
        t_up, t_down = self._transfer_times(up, down)
        entry = self._sigs.get(sig)
        if entry is not None and entry.server.value is not None:
            server = entry.server.value + entry.codec_s
        else:
            server = (self.server_per_element.value or 0.0) * elements
        return (self.rtt.value or 0.0) + t_up + t_down + server

    def server_s(self, sig: Signature) -> float | None:
        """The server's recent queue + compute seconds for this signature (``None``: unseen)."""
        entry = self._sigs.get(sig)
        return None if entry is None else entry.server.value

    def observed(self, sig: Signature) -> float | None:
        """The recent observed end-to-end time for this signature (for reports)."""
        entry = self._sigs.get(sig)
        return None if entry is None else entry.total.value

    def age(self, now: float) -> float:
        """Seconds since this remote last answered anything."""
        return now - self.last_contact

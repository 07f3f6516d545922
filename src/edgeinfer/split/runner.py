"""``SplitModel``: one cut of a model, head on this device and tail on an edge server.

The head is a local :class:`~edgeinfer.runtime.Model`; its outputs (the tensors crossing
the cut, compressed if the bundles were made so) go to the tail bundle served by
``edgeinfer serve`` (or any Open Inference Protocol server) through a
:class:`~edgeinfer.offload.RemoteModel`. Only features leave the device, unless the cut
carries model inputs (remote-only does, by definition; :attr:`SplitModel.raw_inputs`
says which).

>>> split = SplitModel.open("out/split", 22, "http://edge:8000")      # doctest: +SKIP
>>> split.predict({"images": x})["output0"]                          # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.errors import InputError
from edgeinfer.split.compress import restore_outputs as _restore
from edgeinfer.split.package import head_name, tail_name
from edgeinfer.split.profile import PROFILE_FILE, CutProfile, SplitProfile

if TYPE_CHECKING:
    from edgeinfer.offload.transport import CallStats
    from edgeinfer.tensors import TensorSpec

__all__ = ["SplitModel", "SplitResult"]


@dataclass(frozen=True)
class SplitResult:
    """One request through a split model."""

    outputs: dict[str, np.ndarray]
    cut: int  # index of the cut used
    kind: str  # "local", "remote" or "split"
    head_s: float  # seconds the head took on the device (0 for remote-only)
    remote_s: float  # seconds of the remote call, transfer included (0 for local-only)
    up_bytes: int  # request bytes on the wire (0 for local-only)
    down_bytes: int  # response bytes on the wire
    seconds: float  # end to end
    stats: CallStats | None = None  # the remote call's own account, when there was one


class SplitModel:
    """Run the head of one cut here and its tail remotely; ``Model``'s ``predict``.

    ``head``: a local model (``None`` for remote-only); ``tail``: a
    :class:`~edgeinfer.offload.RemoteModel` or anything with ``predict`` (``None`` for
    local-only). ``cut``: the profile entry of this cut. ``restore_outputs``: the tail
    returns quantized outputs (bundles made with output compression); they are restored
    here, so callers see the model's own outputs.
    """

    def __init__(
        self, head: Any, tail: Any, cut: CutProfile, *, restore_outputs: bool = False
    ) -> None:
        if head is None and tail is None:
            raise InputError("a split model needs a head, a tail, or both")
        if (head is None) != (cut.kind == "remote") or (tail is None) != (cut.kind == "local"):
            raise InputError(
                f"cut {cut.index} is {cut.kind}: it needs "
                + {"remote": "a tail and no head", "local": "a head and no tail"}.get(
                    cut.kind, "both a head and a tail"
                )
            )
        self.head = head
        self.tail = tail
        self.cut = cut
        self.restore_outputs = restore_outputs and tail is not None

    def __repr__(self) -> str:
        return f"SplitModel(cut={self.cut.index}, kind={self.cut.kind!r})"

    def __enter__(self) -> SplitModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(
        cls,
        package: str | os.PathLike[str],
        cut: int,
        url: str | None = None,
        *,
        token: str | None = None,
        transport: str = "http",
        timeout: float = 10.0,  # seconds per remote call
        threads: int | None = None,
        slowdown: float = 1.0,  # emulate a device this many times slower (netem)
        compress: str | None = None,  # send the crossing tensors HTTP-compressed
    ) -> SplitModel:
        """The cut ``cut`` of a directory written by ``edgeinfer split``, its tail at ``url``.

        ``compress``: ``"zstd"``, ``"gzip"`` or ``"deflate"`` (see
        :class:`~edgeinfer.offload.RemoteModel`); answers come back compressed whenever the
        server offers it.
        """
        from edgeinfer.runtime import load

        root = Path(package)
        profile = SplitProfile.load(root / PROFILE_FILE)
        entry = profile.cut(cut)
        head: Any = None
        if entry.kind != "remote":
            head = load(root / "heads" / head_name(profile.model, cut), threads=threads)
            if slowdown != 1.0:
                from edgeinfer.netem import EmulatedDevice

                head = EmulatedDevice(head, slowdown)
        tail: Any = None
        if entry.kind != "local":
            if url is None:
                raise InputError(f"cut {cut} runs a tail remotely: give the server's URL")
            from edgeinfer.offload.remote import RemoteModel

            tail = RemoteModel(
                url, tail_name(profile.model, cut), token=token, transport=transport,  # type: ignore[arg-type]
                timeout=timeout, compress=compress,
            )  # fmt: skip
            if slowdown != 1.0:
                from edgeinfer.netem import EmulatedClient

                tail = EmulatedClient(tail, slowdown)  # its compression work is slower too
        return cls(head, tail, entry, restore_outputs=profile.compress_outputs is not None)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        first = self.head if self.head is not None else self.tail
        specs: tuple[TensorSpec, ...] = first.inputs
        return specs

    @property
    def raw_inputs(self) -> tuple[str, ...]:
        """Model inputs this cut sends off the device as they are."""
        return self.cut.raw_inputs

    def validate(self, inputs: Any) -> dict[str, np.ndarray]:
        first = self.head if self.head is not None else self.tail
        feeds: dict[str, np.ndarray] = first.validate(inputs)
        return feeds

    def infer(
        self,
        inputs: Any,
        outputs: Sequence[str] | None = None,
        *,
        private: bool | Collection[str] = False,
        timeout: float | None = None,
    ) -> SplitResult:
        """Run head, send, run tail; the outputs with what each part took.

        ``private``: ``True`` (every model input) or the names of inputs that must not
        leave the device; a cut that would send one is refused with :class:`InputError`.
        """
        start = time.perf_counter()
        feeds = self.validate(inputs)
        guarded = set(feeds) if private is True else set(private or ())
        leaking = sorted(guarded & set(self.raw_inputs))
        if leaking:
            raise InputError(
                f"cut {self.cut.index} ({self.cut.kind}) would send private input(s) "
                f"{', '.join(map(repr, leaking))} off the device; use a later cut"
            )
        head_s = 0.0
        sent: Mapping[str, np.ndarray] = feeds
        if self.head is not None:
            t0 = time.perf_counter()
            sent = self.head.predict(feeds, None if self.tail is not None else outputs)
            head_s = time.perf_counter() - t0
        if self.tail is None:
            return SplitResult(
                dict(sent), self.cut.index, self.cut.kind, head_s, 0.0, 0, 0,
                time.perf_counter() - start,
            )  # fmt: skip
        t1 = time.perf_counter()
        asked = None if self.restore_outputs else outputs  # quantized names differ
        if hasattr(self.tail, "infer"):
            result = self.tail.infer(dict(sent), asked, timeout=timeout, validated=True)
            out, stats = result.outputs, result.stats
            up, down = stats.up_bytes, stats.down_bytes
        else:  # a local stand-in for the tail
            out, stats = self.tail.predict(dict(sent), asked), None
            up = down = 0
        if self.restore_outputs:
            out = _restore(out)
            if outputs is not None:
                missing = [n for n in outputs if n not in out]
                if missing:
                    raise InputError(
                        f"unknown output(s) {', '.join(map(repr, missing))}; the model has "
                        f"{', '.join(map(repr, out))}"
                    )
                out = {n: out[n] for n in outputs}
        remote_s = time.perf_counter() - t1
        return SplitResult(
            dict(out), self.cut.index, self.cut.kind, head_s, remote_s, up, down,
            time.perf_counter() - start, stats,
        )  # fmt: skip

    def predict(self, inputs: Any, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Same contract as :meth:`Model.predict`."""
        return self.infer(inputs, outputs).outputs

    def close(self) -> None:
        for part in (self.head, self.tail):
            if part is not None:
                part.close()

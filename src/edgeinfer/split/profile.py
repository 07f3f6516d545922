"""Per-cut measurements a planner needs, saved with the bundles so devices need not redo them.

For every profiled cut: how long the head takes and how long the tail takes (each run
through :class:`edgeinfer.Model` on the profiling host, median of several runs), and the
bytes sent up (the head's real outputs, after compression) and down (the outputs, after
output compression if the served halves quantize them), both raw
and as HTTP compression would send them (``packed_*``: :mod:`edgeinfer.protocol.coding`'s
best coding, on these real tensors; a body under its threshold is sent raw). The
planner scales the head time by the device's slowdown against this host and the tail
time by the server's load, so one profile serves many devices. Remote-only has no head
(its bytes are the raw inputs) and local-only no tail (nothing is sent).

The profile is a small JSON file (``split.json``) placed in every head and tail bundle.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer._atomic import write_atomic
from edgeinfer.errors import BundleError, InputError
from edgeinfer.runtime.bench import time_calls
from edgeinfer.split._opset import max_error as _max_error

if TYPE_CHECKING:
    from edgeinfer.split.extract import SplitFiles
    from edgeinfer.split.graph import Cut

__all__ = [
    "PROFILE_FILE",
    "PROFILE_VERSION",
    "CutProfile",
    "SplitProfile",
    "pack_timed",
    "profile_cuts",
    "time_model",
]

PROFILE_FILE = "split.json"
PROFILE_VERSION = 1


@dataclass(frozen=True)
class CutProfile:
    """One cut, measured."""

    index: int  # index in the model's cut list
    position: int  # nodes in the head
    kind: str  # "remote", "split" or "local"
    tensors: tuple[str, ...]  # crossing tensors (before compression)
    raw_inputs: tuple[str, ...]  # model inputs sent as they are (privacy: raw data leaves)
    bytes_up: int  # bytes sent per request at the profiled batch (0 for local-only)
    bytes_down: int  # bytes of outputs returned per request (0 for local-only)
    head_ms: float  # head latency on the profiling host (0 for remote-only)
    tail_ms: float  # tail latency on the profiling host (0 for local-only)
    max_abs_error: float = 0.0  # head -> tail against the full model, profiling inputs
    packed_up: int | None = None  # bytes_up after HTTP compression (None: not measured)
    packed_down: int | None = None  # bytes_down after HTTP compression
    packed_up_ms: float | None = None  # compressing the upload, on the profiling host
    packed_down_ms: float | None = None  # decompressing the download, on the profiling host
    codec_ms: float = 0.0  # the device's compression work per request (see over_wire)

    def over_wire(self, up: bool, down: bool) -> CutProfile:
        """This cut with the byte counts a transport that compresses ``up``/``down`` sends,
        and the device-side work that costs (``codec_ms``: compressing the upload,
        decompressing the download; the planner scales it by the device's slowdown)."""
        codec = 0.0
        if up and self.packed_up_ms is not None:
            codec += self.packed_up_ms
        if down and self.packed_down_ms is not None:
            codec += self.packed_down_ms
        return replace(
            self,
            bytes_up=self.packed_up if up and self.packed_up is not None else self.bytes_up,
            bytes_down=(
                self.packed_down if down and self.packed_down is not None else self.bytes_down
            ),
            codec_ms=codec,
        )


@dataclass(frozen=True)
class SplitProfile:
    """All profiled cuts of one model, with what they were measured on."""

    model: str  # model name
    model_sha256: str  # the full model file the cuts belong to
    batch: int  # samples per request when measured
    dims: Mapping[str, int]  # sizes given to dynamic dimensions besides the batch
    compress: str | None  # cut compression in the head/tail measured
    input_bytes: int  # raw input bytes per request
    output_bytes: int  # output bytes per request
    cuts: tuple[CutProfile, ...]
    host: Mapping[str, Any] = field(default_factory=dict)  # where it was measured
    compress_outputs: str | None = None  # output compression of the served halves
    version: int = PROFILE_VERSION

    def over_wire(self, up: bool, down: bool) -> SplitProfile:
        """The profile as a transport compressing ``up``/``down`` sees it (see
        :meth:`CutProfile.over_wire`); the planner then costs what really crosses."""
        if not (up or down):
            return self
        return replace(self, cuts=tuple(c.over_wire(up, down) for c in self.cuts))

    def cut(self, index: int) -> CutProfile:
        for c in self.cuts:
            if c.index == index:
                return c
        have = ", ".join(str(c.index) for c in self.cuts)
        raise InputError(f"cut {index} is not in the profile of {self.model!r} (has {have})")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dims"] = dict(self.dims)
        data["host"] = dict(self.host)
        data["cuts"] = [{**asdict(c), "tensors": list(c.tensors)} for c in self.cuts]
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "profile") -> SplitProfile:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("version") != PROFILE_VERSION:
            raise BundleError(
                f"{where}: unsupported split profile version {data.get('version')!r}; this "
                f"edgeinfer reads version {PROFILE_VERSION}"
            )
        try:
            cuts = tuple(
                CutProfile(
                    index=int(c["index"]),
                    position=int(c["position"]),
                    kind=_kind(c["kind"]),
                    tensors=tuple(str(t) for t in c["tensors"]),
                    raw_inputs=tuple(str(t) for t in c["raw_inputs"]),
                    bytes_up=_nonneg(c["bytes_up"], "bytes_up"),
                    bytes_down=_nonneg(c["bytes_down"], "bytes_down"),
                    head_ms=_nonneg(c["head_ms"], "head_ms"),
                    tail_ms=_nonneg(c["tail_ms"], "tail_ms"),
                    max_abs_error=_nonneg(c.get("max_abs_error", 0.0), "max_abs_error"),
                    packed_up=_optional(c.get("packed_up"), "packed_up"),
                    packed_down=_optional(c.get("packed_down"), "packed_down"),
                    packed_up_ms=_optional_ms(c.get("packed_up_ms"), "packed_up_ms"),
                    packed_down_ms=_optional_ms(c.get("packed_down_ms"), "packed_down_ms"),
                    codec_ms=_nonneg(c.get("codec_ms", 0.0), "codec_ms"),
                )
                for c in data["cuts"]
            )
            return cls(
                model=str(data["model"]),
                model_sha256=str(data["model_sha256"]),
                batch=int(data["batch"]),
                dims={str(k): int(v) for k, v in dict(data["dims"]).items()},
                compress=None if data["compress"] is None else str(data["compress"]),
                input_bytes=int(data["input_bytes"]),
                output_bytes=int(data["output_bytes"]),
                cuts=cuts,
                host=dict(data.get("host") or {}),
                compress_outputs=_mode(data.get("compress_outputs")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BundleError(f"{where}: invalid split profile: {what}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON (atomically); returns the path."""
        dest = Path(path)
        write_atomic(dest, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))
        return dest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitProfile:
        """Read a profile file, or the one inside a bundle directory."""
        p = Path(path)
        if p.is_dir():
            p = p / PROFILE_FILE
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(f"{p}: no split profile here") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{p}: unreadable split profile ({exc})") from None
        return cls.from_dict(data, str(p))


def _kind(value: Any) -> str:
    if value not in ("remote", "split", "local"):
        raise ValueError(f"kind {value!r} must be 'remote', 'split' or 'local'")
    return str(value)


def _nonneg(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} {value!r} must be a number >= 0")
    return value


def _mode(value: Any) -> str | None:
    from edgeinfer.split.compress import MODES

    if value is not None and value not in MODES:
        raise ValueError(f"compress_outputs {value!r} must be null or one of {', '.join(MODES)}")
    return None if value is None else str(value)


def _optional(value: Any, name: str) -> int | None:
    return None if value is None else int(_nonneg(value, name))


def _optional_ms(value: Any, name: str) -> float | None:
    return None if value is None else float(_nonneg(value, name))


def pack_timed(arrays: Mapping[str, np.ndarray], repeats: int = 3) -> tuple[int, float, float]:
    """``arrays`` as an HTTP body compressed by the best available coding: its bytes, and the
    median milliseconds to compress it and to decompress it (0 when it is sent raw)."""
    from edgeinfer.protocol import coding

    body = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    if not coding.worth_encoding(len(body)) or not coding.available():
        return len(body), 0.0, 0.0
    name = coding.available()[0]
    enc, dec, packed = [], [], body
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        packed = coding.encode(body, name)
        t1 = time.perf_counter()
        coding.decode(packed, name, limit=len(body))
        dec.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
    if len(packed) >= len(body):
        return len(body), 0.0, 0.0  # sent raw: nothing to do
    return len(packed), statistics.median(enc) * 1e3, statistics.median(dec) * 1e3


def time_model(
    model: Any, feeds: Mapping[str, np.ndarray], *, repeats: int = 20, warmup: int = 3
) -> float:
    """Median milliseconds of ``model.predict(feeds)`` after ``warmup`` untimed runs."""
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    return float(statistics.median(time_calls(model, feeds, repeats, warmup)))


def nbytes(arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> int:
    values = arrays.values() if isinstance(arrays, Mapping) else arrays
    return int(sum(np.asarray(a).nbytes for a in values))


def _compression(compress: str | None, outputs: str | None) -> tuple[str, str]:
    """What compression is asked for, and by which CLI options, for one-line messages."""
    if compress is not None and outputs is not None:
        return "cut and output compression", "--compress and --compress-outputs"
    if compress is not None:
        return "cut compression", "--compress"
    return "output compression", "--compress-outputs"


def profile_cuts(
    model_path: str | os.PathLike[str],
    cuts: Sequence[Cut],
    work_dir: str | os.PathLike[str],
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    compress: str | None = None,
    compress_outputs: str | None = None,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
    name: str | None = None,
    note: Callable[[str], None] | None = None,
) -> tuple[SplitProfile, dict[int, SplitFiles]]:
    """Extract and measure each cut; the profile and the head/tail files of every cut.

    ``inputs``: real inputs (one request; their batch is the profiled batch); by default
    sample inputs of ``batch`` samples. Halves are written to ``work_dir/cut-<index>/``.
    ``compress``: cut compression (``"uint8"``/``"fp16"``); ``compress_outputs``: the same
    for what every served half (tails, remote-only's whole model) returns. A model older
    than opset 13 is upgraded for compression (checked against the original on the
    inputs; ``note`` is told in one line).
    """
    import platform

    import onnxruntime

    from edgeinfer.bundle import sha256_file
    from edgeinfer.runtime import load
    from edgeinfer.split._inputs import canonical_dims, input_shapes, sample_feeds
    from edgeinfer.split._opset import upgrade_for_compression
    from edgeinfer.split.compress import check_mode, compress_split, restore_outputs
    from edgeinfer.split.compress import compress_outputs as quantize_outputs
    from edgeinfer.split.extract import HEAD_FILE, TAIL_FILE, SplitFiles, save_model, split_model
    from edgeinfer.split.graph import load_model

    if not cuts:
        raise InputError("no cuts to profile")
    if compress is not None:
        check_mode(compress)
    if compress_outputs is not None:
        check_mode(compress_outputs, "output compression")
    model = load_model(model_path)
    dims = canonical_dims(model, dims, str(model_path))
    model_inputs = [vi.name for vi in model.graph.input]
    if inputs is None:
        feeds = sample_feeds(input_shapes(model, dims or {}, str(model_path)), batch, dims or {})
    else:
        feeds = {k: np.asarray(v) for k, v in inputs.items()}
    opts: dict[str, Any] = {"providers": ["cpu"], "threads": threads}
    with load(model_path, **opts) as full:
        feeds = full.validate(feeds)
        want = full.predict(feeds)
    batch = int(next(iter(feeds.values())).shape[0]) if feeds else 1
    if compress is not None or compress_outputs is not None:
        what, flags = _compression(compress, compress_outputs)
        model, said = upgrade_for_compression(
            model, feeds, want, what=what, flags=flags, name=name or Path(model_path).stem,
            threads=threads,
        )  # fmt: skip
        if said is not None and note is not None:
            note(said)
    files: dict[int, SplitFiles] = {}
    profiles = []
    for cut in cuts:
        head, tail = split_model(model, cut)
        if compress is not None:
            head, tail = compress_split(head, tail, cut, compress)
        if compress_outputs is not None and not cut.is_local_only:
            tail = quantize_outputs(tail, compress_outputs)
        where = Path(work_dir) / f"cut-{cut.index}"
        pair = SplitFiles(save_model(head, where / HEAD_FILE), save_model(tail, where / TAIL_FILE))
        files[cut.index] = pair
        with load(pair.head, **opts) as h:
            head_feeds = {s.name: feeds[s.name] for s in h.inputs}
            head_ms = (
                0.0
                if cut.is_remote_only
                else time_model(h, head_feeds, repeats=repeats, warmup=warmup)
            )
            sent = h.predict(head_feeds)
        with load(pair.tail, **opts) as t:
            tail_ms = (
                0.0 if cut.is_local_only else time_model(t, sent, repeats=repeats, warmup=warmup)
            )
            got = t.predict(sent)
        local = cut.is_local_only
        up = (0, 0.0, 0.0) if local else pack_timed(sent)
        down = (0, 0.0, 0.0) if local else pack_timed(got)
        profiles.append(
            CutProfile(
                index=cut.index,
                position=cut.position,
                kind=cut.kind,
                tensors=cut.tensors,
                raw_inputs=() if local else tuple(x for x in cut.tensors if x in model_inputs),
                bytes_up=0 if local else nbytes(sent),
                bytes_down=0 if local else nbytes(got),
                head_ms=head_ms,
                tail_ms=tail_ms,
                max_abs_error=_max_error(want, restore_outputs(got)),
                packed_up=up[0],
                packed_down=down[0],
                packed_up_ms=up[1],  # the device compresses what it sends
                packed_down_ms=down[2],  # and decompresses what comes back
            )
        )
    profile = SplitProfile(
        model=name or Path(model_path).stem,
        model_sha256=sha256_file(model_path),
        batch=batch,
        dims=dict(dims or {}),
        compress=compress,
        compress_outputs=compress_outputs,
        input_bytes=nbytes(feeds),
        output_bytes=nbytes(want),
        cuts=tuple(profiles),
        host={
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": threads,
            "onnxruntime": onnxruntime.__version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return profile, files

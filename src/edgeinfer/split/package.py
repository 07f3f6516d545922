"""Head and tail bundles of a model's cuts, with the profile inside each.

:func:`write_split` profiles the given cuts and writes::

    OUT/split.json                         the profile
    OUT/heads/<name>-head-<i>/             bundle for the device (not for remote-only)
    OUT/tails/<name>-tail-<i>/<version>/   bundle for the server (not for local-only);
                                           OUT/tails is a model repository for ``serve``

Every bundle carries ``split.json`` (the whole profile, so a device plans without
re-profiling) and ``cut.json`` (which cut it is, its compression and the names of its
other half), plus a golden sample: the head's on the profiling inputs, the tail's on what
the head produced from them, so a server health-checks a tail like any other bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.errors import BundleError
from edgeinfer.split.graph import Cut
from edgeinfer.split.profile import PROFILE_FILE, SplitProfile, profile_cuts

__all__ = ["CUT_FILE", "SplitPackage", "head_name", "read_cut_record", "tail_name", "write_split"]

CUT_FILE = "cut.json"


def head_name(model: str, index: int) -> str:
    return f"{model[:100]}-head-{index}"


def tail_name(model: str, index: int) -> str:
    return f"{model[:100]}-tail-{index}"


@dataclass(frozen=True)
class SplitPackage:
    """What :func:`write_split` wrote."""

    profile: SplitProfile
    profile_path: Path
    heads: Mapping[int, Path]  # cut index -> head bundle directory
    tails: Mapping[int, Path]  # cut index -> tail bundle directory (a version directory)
    repository: Path  # the tails' model repository


def read_cut_record(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``cut.json`` of a head or tail bundle."""
    path = Path(bundle_dir) / CUT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a split bundle ({exc})") from None
    if not isinstance(data, dict) or "cut" not in data:
        raise BundleError(f"{path}: not a split cut record")
    return data


def _sample_inputs(source: Bundle, dims: Mapping[str, int] | None) -> dict[str, np.ndarray]:
    """Sample inputs sized as the cuts were (unnamed dims too: ``x.2``)."""
    from edgeinfer.split._inputs import canonical_dims, input_shapes, sample_feeds
    from edgeinfer.split.graph import load_model

    model = load_model(source.model_path, weights=False)
    dims = canonical_dims(model, dims, source.name)
    return sample_feeds(input_shapes(model, dims or {}, source.name), 1, dims or {})


def write_split(
    source: Bundle,
    cuts: Sequence[Cut],
    out: str | os.PathLike[str],
    *,
    inputs: Any = None,
    dims: Mapping[str, int] | None = None,
    compress: str | None = None,
    compress_outputs: str | None = None,
    repeats: int = 20,
    threads: int | None = 1,
    note: Callable[[str], None] | None = None,
) -> SplitPackage:
    """Profile ``cuts`` of ``source`` and write their bundles under ``out``.

    ``inputs``: real inputs to profile on and to take golden samples from (default: the
    source bundle's golden inputs, else sample inputs). ``compress``: cut compression;
    ``compress_outputs``: quantize what the tails return (the device restores it).
    ``note``: told in one line when the model's opset is upgraded for compression.

    On any error nothing written is left behind: ``out`` is removed if this call made
    it, else only what this call added to it.
    """
    from edgeinfer.runtime import load

    out_dir = Path(out)
    if inputs is None:
        golden = source.golden()
        inputs = golden.inputs if golden is not None else _sample_inputs(source, dims)
    with load(source.model_path, providers=["cpu"]) as full:
        feeds = full.validate(inputs)
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir}: exists and is not a directory; --out needs a directory")
    before = set(out_dir.iterdir()) if out_dir.is_dir() else None
    try:
        return _write(
            source, cuts, out_dir, feeds, dims=dims, compress=compress,
            compress_outputs=compress_outputs, repeats=repeats, threads=threads, note=note,
        )  # fmt: skip
    except BaseException:
        _undo(out_dir, before)
        raise


def _undo(out_dir: Path, before: set[Path] | None) -> None:
    """Remove what a failed :func:`write_split` wrote: ``out_dir`` itself if it did not
    exist (``before`` None), else the entries it did not hold."""
    if before is None:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for entry in set(out_dir.iterdir()) - before if out_dir.is_dir() else ():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _write(
    source: Bundle,
    cuts: Sequence[Cut],
    out_dir: Path,
    feeds: Mapping[str, np.ndarray],
    *,
    dims: Mapping[str, int] | None,
    compress: str | None,
    compress_outputs: str | None,
    repeats: int,
    threads: int | None,
    note: Callable[[str], None] | None,
) -> SplitPackage:
    from edgeinfer.runtime import load

    name = source.name
    version = max(source.version, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".split-", dir=out_dir) as tmp:
        work = Path(tmp)
        profile, files = profile_cuts(
            source.model_path, cuts, work, inputs=feeds, dims=dims, compress=compress,
            compress_outputs=compress_outputs, repeats=repeats, threads=threads, name=name,
            note=note,
        )  # fmt: skip
        profile_path = profile.save(out_dir / PROFILE_FILE)
        heads: dict[int, Path] = {}
        tails: dict[int, Path] = {}
        for cut in cuts:
            pair = files[cut.index]
            record = {
                "cut": cut.to_dict(),
                "compress": None if cut.is_remote_only or cut.is_local_only else compress,
                "compress_outputs": None if cut.is_local_only else compress_outputs,
                "model": name,
                "model_sha256": profile.model_sha256,
                "head": None if cut.is_remote_only else head_name(name, cut.index),
                "tail": None if cut.is_local_only else tail_name(name, cut.index),
                "version": version,
            }
            record_path = work / f"cut-{cut.index}" / CUT_FILE
            record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            extra = {PROFILE_FILE: profile_path, CUT_FILE: record_path}
            recipe = {
                "split": {
                    "cut": cut.index,
                    "compress": record["compress"],
                    "compress_outputs": record["compress_outputs"],
                }
            }
            with load(pair.head, providers=["cpu"]) as h:
                head_in = {s.name: feeds[s.name] for s in h.inputs}
                sent: dict[str, np.ndarray] = h.predict(head_in)
            if not cut.is_remote_only:
                heads[cut.index] = Bundle.create(
                    pair.head, out_dir / "heads" / head_name(name, cut.index),
                    name=head_name(name, cut.index), version=version, golden_inputs=head_in,
                    extra_files=extra, recipe=recipe, source=str(source.model_path),
                    source_sha256=profile.model_sha256, overwrite=True,
                ).path  # fmt: skip
            if not cut.is_local_only:
                where = out_dir / "tails" / tail_name(name, cut.index) / str(version)
                tails[cut.index] = Bundle.create(
                    pair.tail, where, name=tail_name(name, cut.index), version=version,
                    golden_inputs=sent, extra_files=extra, recipe=recipe,
                    source=str(source.model_path), source_sha256=profile.model_sha256,
                    labels=source.manifest.labels, overwrite=True,
                ).path  # fmt: skip
    return SplitPackage(profile, profile_path, heads, tails, out_dir / "tails")

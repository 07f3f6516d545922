"""The model bundle: what edgeinfer optimizes, ships, installs and runs.

A bundle is a directory::

    digits-cnn/
      model.onnx       the model (or model.tflite)
      manifest.json    name, integer version, format, the model file's size and sha256,
                       input/output specs, labels, provenance (source hash, recipe), metrics
      golden.npz       optional: inputs, the outputs the model gave at build time, tolerance

A generative bundle (``kind: "generative"``, :meth:`Bundle.create_generative`) holds a
language model's several files (``model.onnx``, its external data, ``genai_config.json``,
the tokenizer), each listed with its size and sha256, and a golden sample of greedy
continuations; the manifest's ``generative`` section records its context length,
vocabulary, chat template and quantization recipe.

``Bundle.open`` verifies sizes and hashes and raises :class:`BundleError` on any mismatch;
``Bundle.pack`` writes a deterministic single-file ``.tar`` (same bundle, same bytes: good
for hashes and deltas) and ``Bundle.unpack`` extracts one, refusing absolute paths, ``..``,
links and devices. A bare ``.onnx`` or ``.tflite`` file is accepted wherever a bundle is.
Writes go to a temporary directory beside the target and are moved into place with
``os.replace``, so a crash never leaves half a bundle where a bundle should be.

The bundle lives in the runtime package, above the backends and below
:class:`~edgeinfer.runtime.Model`: describing a bare model file and recording a golden
sample take a backend (:func:`~edgeinfer.runtime.backends.backend_for`), and ``load``
opens bundles. :mod:`edgeinfer.bundle` is its public name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeinfer._atomic import replacing, write_atomic
from edgeinfer._version import __version__
from edgeinfer.errors import BundleError
from edgeinfer.manifest import (
    GOLDEN_FILE,
    MANIFEST_FILE,
    MODEL_FORMATS,
    SCHEMA_VERSION,
    FileRef,
    GenerativeSpec,
    Golden,
    Manifest,
    check_name,
    model_format,
    sha256_file,
)
from edgeinfer.runtime.backends import backend_for
from edgeinfer.tensors import InputValidator, TensorSpec

__all__ = [
    "GOLDEN_FILE",
    "MANIFEST_FILE",
    "MODEL_FORMATS",
    "SCHEMA_VERSION",
    "Bundle",
    "FileRef",
    "Golden",
    "Manifest",
    "cache_dir",
    "check_out_dir",
    "model_format",
    "sha256_file",
]

_MAX_MEMBER_BYTES = 8 << 30  # no single bundle file above 8 GiB


class Predictor(Protocol):
    """What :meth:`Bundle.check_golden` runs: a :class:`~edgeinfer.runtime.Model`, say."""

    def predict(self, inputs: Any) -> dict[str, np.ndarray]: ...


class Bundle:
    """A verified bundle on disk (or a bare model file treated as one)."""

    def __init__(self, path: Path, manifest: Manifest, *, bare: bool = False) -> None:
        self.path = path
        self.manifest = manifest
        self.bare = bare

    def __repr__(self) -> str:
        m = self.manifest
        return f"Bundle({m.name!r}, version={m.version}, format={m.format!r}, path='{self.path}')"

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def model_path(self) -> Path:
        return self.path if self.bare else self.path / self.manifest.model.file

    def golden(self) -> Golden | None:
        """The golden sample, or ``None`` when the bundle has none."""
        if self.bare or self.manifest.golden is None:
            return None
        return Golden.load(self.manifest.golden.verify(self.path))

    def check_golden(self, model: Predictor) -> list[str]:
        """Run the golden inputs through ``model``; the list of mismatches (empty: healthy)."""
        golden = self.golden()
        if golden is None:
            return []
        return golden.compare(model.predict(golden.inputs))

    # ---------------------------------------------------------------- open
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Bundle:
        """Open and verify a bundle directory, a packed ``.tar`` or a bare model file.

        A ``.tar`` is unpacked (once) into the user cache directory.
        """
        p = Path(path)
        if not p.exists():
            raise BundleError(f"{p}: no such bundle or model file")
        if p.is_dir():
            return cls._open_dir(p)
        if p.suffix.lower() == ".tar":
            cache = _cache_dir() / "unpacked" / sha256_file(p)
            if (cache / MANIFEST_FILE).is_file():
                return cls._open_dir(cache)
            return cls.unpack(p, cache)
        return cls._open_bare(p)

    @classmethod
    def _open_dir(cls, root: Path) -> Bundle:
        mpath = root / MANIFEST_FILE
        if not mpath.is_file():
            raise BundleError(f"{root}: not a bundle (no {MANIFEST_FILE})")
        try:
            data = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{mpath}: not valid JSON ({exc})") from None
        manifest = Manifest.from_dict(data, str(mpath))
        if model_format(manifest.model.file) != manifest.format:
            raise BundleError(
                f"{mpath}: model file {manifest.model.file!r} does not match format "
                f"{manifest.format!r}"
            )
        manifest.model.verify(root)
        for ref in (manifest.golden, *manifest.files):
            if ref is not None:
                ref.verify(root)
        return cls(root, manifest)

    @classmethod
    def _open_bare(cls, path: Path) -> Bundle:
        fmt = model_format(path)
        backend = backend_for(path, providers=["cpu"])
        try:
            name = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip("._-") or "model"
            manifest = Manifest(
                name=name[:128],
                version=0,
                format=fmt,
                model=FileRef.of(path),
                inputs=backend.inputs,
                outputs=backend.outputs,
            )
        finally:
            backend.close()
        return cls(path, manifest, bare=True)

    # ---------------------------------------------------------------- create
    @classmethod
    def create(
        cls,
        model_path: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        name: str,
        version: int = 1,
        golden_inputs: Any = None,
        atol: float = 1e-4,
        rtol: float = 1e-3,
        labels: list[str] | tuple[str, ...] | None = None,
        metrics: Mapping[str, Any] | None = None,
        recipe: Mapping[str, Any] | None = None,
        source: str | os.PathLike[str] | None = None,
        source_sha256: str | None = None,
        extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
        overwrite: bool = False,
    ) -> Bundle:
        """Build a bundle from a model file; record golden outputs if inputs are given.

        >>> Bundle.create("model.onnx", "bundles/digits", name="digits", version=1,
        ...               golden_inputs=x_test[:8])  # doctest: +SKIP
        """
        src = Path(model_path)
        if not src.is_file():
            raise BundleError(f"{src}: model file not found")
        fmt = model_format(src)
        out = _destination(name, version, out_dir, overwrite)
        with _staging(out) as stage:
            model_file = stage / f"model.{fmt}"
            shutil.copyfile(src, model_file)
            backend = backend_for(model_file, providers=["cpu"])
            golden_ref = None
            if golden_inputs is not None:
                # What Model.predict does: validate and convert, then run every output.
                feeds = InputValidator(backend.inputs)(golden_inputs)
                names = [s.name for s in backend.outputs]
                outputs = dict(zip(names, backend.run(feeds, names), strict=True))
                golden = Golden(feeds, outputs, atol, rtol)
                golden.save(stage / GOLDEN_FILE)
                golden_ref = FileRef.of(stage / GOLDEN_FILE)
            extra = []
            for fname, fpath in (extra_files or {}).items():
                if fname in {MANIFEST_FILE, GOLDEN_FILE, model_file.name} or "/" in fname:
                    raise BundleError(f"extra file name {fname!r} is reserved or not plain")
                shutil.copyfile(fpath, stage / fname)
                extra.append(FileRef.of(stage / fname))
            model_ref = FileRef.of(model_file)
            manifest = Manifest(
                name=name,
                version=version,
                format=fmt,
                model=model_ref,
                inputs=backend.inputs,
                outputs=backend.outputs,
                labels=None if labels is None else tuple(labels),
                provenance={
                    "source": str(source if source is not None else src.name),
                    "source_sha256": source_sha256 or model_ref.sha256,
                    "recipe": dict(recipe) if recipe else None,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "edgeinfer_version": __version__,
                },
                metrics=dict(metrics or {}),
                golden=golden_ref,
                files=tuple(extra),
            )
            backend.close()
            _write_manifest(stage, manifest)
        return cls._open_dir(out)

    @classmethod
    def create_generative(
        cls,
        model_dir: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        name: str,
        spec: GenerativeSpec,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        version: int = 1,
        golden: Golden | None = None,
        metrics: Mapping[str, Any] | None = None,
        recipe: Mapping[str, Any] | None = None,
        source: str | None = None,
        source_sha256: str | None = None,
        model_file: str = "model.onnx",
        overwrite: bool = False,
    ) -> Bundle:
        """Bundle a generative model directory (kind ``"generative"``).

        Every plain file of ``model_dir`` is copied and listed with its size and sha256
        (``model_file`` as the manifest's model, the external data, the genai config and
        the tokenizer files as its ``files``), so ``open`` verifies each of them.
        ``golden`` (greedy continuations, computed by :mod:`edgeinfer.generate`, which
        sits above the runtime) is stored as the golden sample.
        """
        src = Path(model_dir)
        if not (src / model_file).is_file():
            raise BundleError(f"{src}: no {model_file} (expected a generative model directory)")
        out = _destination(name, version, out_dir, overwrite)
        with _staging(out) as stage:
            extra = []
            for path in sorted(src.iterdir()):
                if not path.is_file() or path.name in {MANIFEST_FILE, GOLDEN_FILE}:
                    continue
                shutil.copyfile(path, stage / path.name)
                if path.name != model_file:
                    extra.append(FileRef.of(stage / path.name))
            golden_ref = None
            if golden is not None:
                golden.save(stage / GOLDEN_FILE)
                golden_ref = FileRef.of(stage / GOLDEN_FILE)
            model_ref = FileRef.of(stage / model_file)
            manifest = Manifest(
                name=name,
                version=version,
                format=model_format(model_file),
                model=model_ref,
                inputs=inputs,
                outputs=outputs,
                provenance={
                    "source": source or src.name,
                    "source_sha256": source_sha256 or model_ref.sha256,
                    "recipe": dict(recipe) if recipe else None,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "edgeinfer_version": __version__,
                },
                metrics=dict(metrics or {}),
                golden=golden_ref,
                files=tuple(extra),
                kind="generative",
                generative=spec,
            )
            _write_manifest(stage, manifest)
        return cls._open_dir(out)

    def with_metrics(self, **metrics: Any) -> Bundle:
        """Record more metrics in the manifest (atomically rewritten); returns the new view."""
        if self.bare:
            raise BundleError(f"{self.path}: a bare model file has no manifest to update")
        manifest = replace(self.manifest, metrics={**self.manifest.metrics, **metrics})
        _write_manifest(self.path, manifest)
        return Bundle(self.path, manifest)

    # ---------------------------------------------------------------- pack / unpack
    def pack(self, tar_path: str | os.PathLike[str]) -> Path:
        """Write the bundle as one deterministic, uncompressed ``.tar``; returns its path."""
        if self.bare:
            raise BundleError(f"{self.path}: create a bundle before packing a bare model file")
        members = [MANIFEST_FILE, self.manifest.model.file]
        members += [r.file for r in (self.manifest.golden, *self.manifest.files) if r is not None]
        dest = Path(tar_path)
        with (
            replacing(dest) as tmp,
            tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for fname in sorted(members):
                info = tarfile.TarInfo(fname)
                info.size = (self.path / fname).stat().st_size
                info.mode = 0o644
                info.mtime = 0
                with open(self.path / fname, "rb") as f:
                    tar.addfile(info, f)
        return dest

    @classmethod
    def unpack(cls, tar_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Bundle:
        """Extract a packed bundle into ``dest`` (must not exist or be empty) and verify it.

        Refuses absolute paths, ``..``, links, devices and nested paths: a bundle is flat.
        """
        src = Path(tar_path)
        out = Path(dest)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BundleError(f"{out} already exists and is not empty")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            tar = tarfile.open(src, mode="r:")  # noqa: SIM115 - closed by the with below
        except (OSError, tarfile.TarError) as exc:
            raise BundleError(f"{src}: not a readable bundle archive ({exc})") from None
        with tar, _staging(out) as stage:
            try:
                for member in tar:
                    _check_member(src, member)
                    fobj = tar.extractfile(member)
                    if fobj is None:  # pragma: no cover - regular files always have data
                        raise BundleError(f"{src}: member {member.name!r} has no data")
                    with open(stage / member.name, "xb") as f:
                        shutil.copyfileobj(fobj, f)
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise BundleError(f"{src}: corrupt bundle archive ({exc})") from None
            except FileExistsError as exc:
                raise BundleError(f"{src}: duplicate member {exc.filename}") from None
            cls._open_dir(stage)  # verify before it becomes visible
        return cls._open_dir(out)


def _check_member(src: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    if not member.isfile():
        kind = "link" if (member.issym() or member.islnk()) else "directory, device or fifo"
        raise BundleError(f"{src}: member {name!r} is a {kind}; a bundle holds only plain files")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"{src}: member {name!r} has an absolute path")
    if ".." in re.split(r"[/\\]", name):
        raise BundleError(f"{src}: member {name!r} escapes the bundle with '..'")
    if "/" in name or "\\" in name or name in {"", "."}:
        raise BundleError(f"{src}: member {name!r} is not a plain file name; bundles are flat")
    if member.size > _MAX_MEMBER_BYTES:
        raise BundleError(f"{src}: member {name!r} is {member.size} bytes, over the limit")


def _write_manifest(root: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n"
    write_atomic(root / MANIFEST_FILE, text.encode("utf-8"))


def _destination(name: str, version: int, out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check a new bundle's name, version and output directory (empty, or ``overwrite``);
    make its parent."""
    check_name(name)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise BundleError(f"version {version!r} must be an integer >= 0")
    return check_out_dir(out_dir, overwrite)


def check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """An output directory for new work: absent, empty, or ``overwrite``; its parent made.
    Every command that writes a bundle or a report folder refuses the same way."""
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(
            f"{out} already exists and is not empty "
            "(pass --overwrite, or overwrite=True from Python)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def stage_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named directory in ``parent`` with the mode a plain ``mkdir`` gives
    (0o777 less the umask).

    ``tempfile.mkdtemp`` makes its directory 0o700, which is right for a scratch space but
    not for one renamed into place as the result: a bundle other users (a server's account,
    say) should read would stay private to its builder.
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{parent}: no free name for a staging directory {prefix}*")


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` that replaces it on success, vanishes on error."""
    stage = stage_dir(out.parent, f".{out.name}.")
    try:
        yield stage
        if out.exists():
            old = stage_dir(out.parent, f".{out.name}.old.")
            os.replace(out, old / "b")
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _cache_dir() -> Path:
    base = os.environ.get("EDGEINFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeinfer"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """edgeinfer's user cache (``$EDGEINFER_CACHE``, else ``~/.cache/edgeinfer``)."""
    return _cache_dir()

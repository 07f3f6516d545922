"""What a bundle declares about itself: ``manifest.json`` (:class:`Manifest`, with a
:class:`FileRef` per file), the golden sample (:class:`Golden`), and the file-level helpers
they need (hashes, formats, names). :mod:`edgeinfer.bundle` reads and writes them."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import BundleError, InputError
from edgeinfer.tensors import TensorSpec, format_shape

__all__ = [
    "GOLDEN_FILE",
    "KINDS",
    "MANIFEST_FILE",
    "MODEL_FORMATS",
    "NAME_PATTERN",
    "SCHEMA_VERSION",
    "FileRef",
    "GenerativeSpec",
    "Golden",
    "Manifest",
    "check_name",
    "model_format",
    "sha256_file",
]

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
GOLDEN_FILE = "golden.npz"
MODEL_FORMATS = {".onnx": "onnx", ".tflite": "tflite"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# "predictive": one call maps inputs to outputs; "generative": a language model that
# continues token sequences (model, external data, genai config and tokenizer files).
KINDS = ("predictive", "generative")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (a model never sits in memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_format(path: str | os.PathLike[str]) -> str:
    """``"onnx"`` or ``"tflite"`` from a model file's suffix, else :class:`BundleError`."""
    suffix = Path(path).suffix.lower()
    try:
        return MODEL_FORMATS[suffix]
    except KeyError:
        raise BundleError(
            f"{path}: unsupported model file type {suffix or '(none)'!r}; expected "
            f"{' or '.join(MODEL_FORMATS)} (or a bundle directory / .tar)"
        ) from None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise BundleError(
            f"bundle name {name!r} is not allowed; use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class FileRef:
    """A file inside a bundle, with the size and hash it must have."""

    file: str
    size: int  # bytes
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileRef:
        return cls(path.name, path.stat().st_size, sha256_file(path))

    def verify(self, root: Path) -> Path:
        path = root / self.file
        if not path.is_file():
            raise BundleError(f"{root}: {self.file} is missing")
        size = path.stat().st_size
        if size != self.size:
            raise BundleError(
                f"{path}: size {size} bytes does not match the manifest's {self.size}; "
                "the file is truncated or was replaced"
            )
        digest = sha256_file(path)
        if digest != self.sha256:
            raise BundleError(
                f"{path}: sha256 {digest[:16]}... does not match the manifest's "
                f"{self.sha256[:16]}...; the file was modified or tampered with"
            )
        return path


@dataclass(frozen=True)
class GenerativeSpec:
    """What a generative bundle's manifest says about its language model.

    ``golden_max_tokens`` is how many tokens each golden prompt was continued by (greedy):
    a device reproduces exactly that many, token for token.
    """

    context_length: int  # tokens: prompt and continuation together
    vocab_size: int  # tokens
    chat_template: str | None = None  # Jinja template of the model's chat format
    quantization: Mapping[str, Any] | None = None  # the recipe: precision, method, block size
    golden_max_tokens: int = 0  # tokens generated per golden prompt

    def to_dict(self) -> dict[str, Any]:
        return {
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "chat_template": self.chat_template,
            "quantization": None if self.quantization is None else dict(self.quantization),
            "golden_max_tokens": self.golden_max_tokens,
        }

    @classmethod
    def from_dict(cls, data: Any) -> GenerativeSpec:
        if not isinstance(data, dict):
            raise TypeError("generative must be an object")
        ints = {}
        for key in ("context_length", "vocab_size", "golden_max_tokens"):
            value = data.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"generative.{key} {value!r} must be an integer >= 0")
            ints[key] = value
        if ints["context_length"] < 1 or ints["vocab_size"] < 1:
            raise ValueError("generative.context_length and vocab_size must be >= 1")
        template = data.get("chat_template")
        if template is not None and not isinstance(template, str):
            raise ValueError("generative.chat_template must be a string or null")
        quant = data.get("quantization")
        if quant is not None and not isinstance(quant, dict):
            raise ValueError("generative.quantization must be an object or null")
        return cls(chat_template=template, quantization=quant, **ints)


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds. Parsed strictly: unknown schema versions are refused."""

    name: str
    version: int
    format: str
    model: FileRef
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    golden: FileRef | None = None
    files: tuple[FileRef, ...] = ()  # further verified files (profiles, tokenizers, ...)
    schema_version: int = SCHEMA_VERSION
    kind: str = "predictive"  # one of KINDS
    generative: GenerativeSpec | None = None  # set exactly when kind is "generative"

    def to_dict(self) -> dict[str, Any]:
        def ref(r: FileRef | None) -> dict[str, Any] | None:
            return None if r is None else {"file": r.file, "size": r.size, "sha256": r.sha256}

        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "model": ref(self.model),
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "labels": None if self.labels is None else list(self.labels),
            "provenance": dict(self.provenance),
            "metrics": dict(self.metrics),
            "golden": ref(self.golden),
            "files": [ref(f) for f in self.files],
            # written only for generative bundles: predictive manifests keep their bytes
            **(
                {"kind": self.kind, "generative": self.generative.to_dict()}
                if self.generative is not None
                else {}
            ),
        }

    def signature_mismatches(
        self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
    ) -> list[str]:
        """Where this manifest's signature and labels disagree with the model's; empty: agree.

        Compared: tensor names, dtypes, ranks, every dimension the model fixes (the manifest
        may fix a size the model leaves dynamic, never contradict one it fixes), and the
        number of labels against a classifier output's fixed class dimension (``[N, C]``).
        A hand-edited manifest that disagrees would have clients send what the model refuses.
        """
        problems: list[str] = []
        for kind, declared, actual in (
            ("input", self.inputs, inputs),
            ("output", self.outputs, outputs),
        ):
            have = {s.name: s for s in actual}
            said = {s.name: s for s in declared}
            missing = [n for n in have if n not in said]
            extra = [n for n in said if n not in have]
            if missing:
                problems.append(f"the model's {kind}(s) {', '.join(map(repr, missing))} missing")
            if extra:
                problems.append(f"{kind}(s) {', '.join(map(repr, extra))} not in the model")
            for name in (n for n in said if n in have):
                why = _spec_mismatch(said[name], have[name])
                if why:
                    problems.append(
                        f"{kind} {name!r} is {said[name].describe()} in the manifest, "
                        f"{have[name].describe()} in the model ({why})"
                    )
        if self.labels is not None:
            classes = [
                s
                for s in outputs
                if s.shape is not None and len(s.shape) == 2 and isinstance(s.shape[1], int)
            ]
            if classes and all(s.shape[1] != len(self.labels) for s in classes):  # type: ignore[index]
                shapes = ", ".join(f"{s.name!r} {format_shape(s.shape)}" for s in classes)
                problems.append(
                    f"{len(self.labels)} labels, but the model's class output(s) {shapes} "
                    f"have {', '.join(str(s.shape[1]) for s in classes)} classes"  # type: ignore[index]
                )
        return problems

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
        schema = data.get("schema_version")
        if schema != SCHEMA_VERSION:
            raise BundleError(
                f"{where}: unsupported schema_version {schema!r}; this edgeinfer reads "
                f"schema_version {SCHEMA_VERSION} (upgrade edgeinfer for newer bundles)"
            )
        try:

            def ref(r: Any) -> FileRef:
                if not isinstance(r, dict):
                    raise TypeError("file reference must be an object")
                file, size, digest = r["file"], r["size"], r["sha256"]
                if not isinstance(file, str) or "/" in file or "\\" in file or file in {".", ".."}:
                    raise ValueError(f"file name {file!r} must be a plain name in the bundle")
                if not isinstance(size, int) or size < 0:
                    raise ValueError(f"size {size!r} must be an integer >= 0")
                if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ValueError(f"sha256 {digest!r} must be 64 lowercase hex digits")
                return FileRef(file, size, digest)

            version = data["version"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise ValueError(f"version {version!r} must be an integer >= 0")
            fmt = data["format"]
            if fmt not in MODEL_FORMATS.values():
                raise ValueError(f"format {fmt!r} must be one of {sorted(MODEL_FORMATS.values())}")
            labels = data.get("labels")
            kind = data.get("kind", "predictive")
            if kind not in KINDS:
                raise ValueError(f"kind {kind!r} must be one of {list(KINDS)}")
            generative = data.get("generative")
            if (kind == "generative") != (generative is not None):
                raise ValueError("a generative bundle (and only one) has a 'generative' section")
            return cls(
                name=check_name(data["name"]),
                version=version,
                format=fmt,
                model=ref(data["model"]),
                inputs=tuple(TensorSpec.from_dict(s) for s in data["inputs"]),
                outputs=tuple(TensorSpec.from_dict(s) for s in data["outputs"]),
                labels=None if labels is None else tuple(str(x) for x in labels),
                provenance=dict(data.get("provenance") or {}),
                metrics=dict(data.get("metrics") or {}),
                golden=None if data.get("golden") is None else ref(data["golden"]),
                files=tuple(ref(f) for f in data.get("files") or ()),
                kind=kind,
                generative=None if generative is None else GenerativeSpec.from_dict(generative),
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, InputError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BundleError(f"{where}: invalid manifest: {what}") from None


def _spec_mismatch(declared: TensorSpec, actual: TensorSpec) -> str:
    """Why a manifest's spec contradicts the model's ("" when it does not)."""
    if declared.dtype != actual.dtype:
        return f"dtype {declared.dtype} vs {actual.dtype}"
    if declared.shape is None or actual.shape is None:
        return ""
    if len(declared.shape) != len(actual.shape):
        return f"rank {len(declared.shape)} vs {len(actual.shape)}"
    for axis, (d, a) in enumerate(zip(declared.shape, actual.shape, strict=True)):
        if isinstance(a, int) and d != a:
            return f"dimension {axis}: {'?' if d is None else d} vs {a}"
    return ""


@dataclass(frozen=True)
class Golden:
    """A golden sample: inputs, the outputs the model gave at build time, and a tolerance."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    atol: float = 1e-4
    rtol: float = 1e-3

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {
            "input_names": np.array(list(self.inputs), dtype=str),
            "output_names": np.array(list(self.outputs), dtype=str),
            "atol": np.float64(self.atol),
            "rtol": np.float64(self.rtol),
        }
        for i, v in enumerate(self.inputs.values()):
            arrays[f"input_{i}"] = v
        for i, v in enumerate(self.outputs.values()):
            arrays[f"output_{i}"] = v
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> Golden:
        try:
            with np.load(path, allow_pickle=False) as z:
                ins = [str(n) for n in z["input_names"]]
                outs = [str(n) for n in z["output_names"]]
                return cls(
                    {n: z[f"input_{i}"] for i, n in enumerate(ins)},
                    {n: z[f"output_{i}"] for i, n in enumerate(outs)},
                    float(z["atol"]),
                    float(z["rtol"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{path}: unreadable golden sample ({exc})") from exc

    def compare(self, outputs: Mapping[str, np.ndarray]) -> list[str]:
        """Mismatches between ``outputs`` and the recorded ones; empty when all agree."""
        problems = []
        for name, want in self.outputs.items():
            got = outputs.get(name)
            if got is None:
                problems.append(f"output {name!r} missing")
            elif got.shape != want.shape:
                problems.append(f"output {name!r}: shape {got.shape}, expected {want.shape}")
            elif want.dtype.kind in "fc":
                if not np.allclose(got, want, atol=self.atol, rtol=self.rtol, equal_nan=True):
                    err = float(np.nanmax(np.abs(got.astype(np.float64) - want)))
                    problems.append(
                        f"output {name!r}: max abs error {err:.3g} exceeds atol {self.atol:g} "
                        f"+ rtol {self.rtol:g}"
                    )
            elif not np.array_equal(got, want):
                problems.append(f"output {name!r}: values differ from the golden sample")
        return problems

"""The model bundle: what edgeinfer optimizes, ships, installs and runs.

The public name of :mod:`edgeinfer.runtime.bundle`, where :class:`Bundle` lives beside
the backends it needs to describe a model file (see that module, and
``docs/adr/0012-import-layers.md`` for why). Import bundles from here.

>>> from edgeinfer.bundle import Bundle
>>> bundle = Bundle.open("bundles/digits-cnn")      # doctest: +SKIP
"""

from edgeinfer.runtime.bundle import (
    GOLDEN_FILE,
    MANIFEST_FILE,
    MODEL_FORMATS,
    SCHEMA_VERSION,
    Bundle,
    FileRef,
    Golden,
    Manifest,
    cache_dir,
    check_out_dir,
    model_format,
    sha256_file,
)

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

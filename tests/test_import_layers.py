"""The import contracts (``[tool.importlinter]`` in pyproject.toml) hold, and they bite.

``lint-imports`` runs on the tree as it is (kept), then on a copy of the package with one
arrow added the wrong way (broken): a circle at module level, one hidden in a function
body (import-linter counts those: a lazy import does not make a circle go away), a
pillar importing another, and a pillar importing the package root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgeinfer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(edgeinfer.__file__).resolve().parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.timeout(180)


def lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contracts, analysing the package under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_imports(tmp_path, PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


# (file in the package, line added at its end, the contract that must break, what it names)
WRONG_ARROWS = [
    pytest.param(
        "offload/splits.py",
        "from edgeinfer.split import placements as _placements\n",
        "No import cycles",
        "- .offload -> .split",
        id="offload-imports-split",
    ),
    pytest.param(
        "tensors.py",
        "def _load(path: str) -> object:\n"
        "    from edgeinfer.runtime import load\n\n"
        "    return load(path)\n",
        "No import cycles",
        "edgeinfer.tensors -> edgeinfer.runtime",
        id="circle-hidden-in-a-function",
    ),
    pytest.param(
        "serve/metrics.py",
        "from edgeinfer.optimize import search as _search\n",
        "cli and demo on top",
        "edgeinfer.serve.metrics -> edgeinfer.optimize.search",
        id="pillar-imports-pillar",
    ),
    pytest.param(
        "deliver/gate.py",
        "import edgeinfer as _root\n",
        "Only cli and demo import the package root",
        "edgeinfer.deliver.gate -> edgeinfer",
        id="pillar-imports-root",
    ),
]


@pytest.mark.parametrize(("path", "line", "contract", "names"), WRONG_ARROWS)
def test_a_wrong_arrow_breaks_a_contract(
    tmp_path: Path, path: str, line: str, contract: str, names: str
) -> None:
    src = tmp_path / "src"
    copy = src / "edgeinfer"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / path
    target.write_text(target.read_text(encoding="utf-8") + "\n\n" + line, encoding="utf-8")

    result = lint_imports(tmp_path, src)

    assert result.returncode == 1, result.stdout + result.stderr
    broken = [ln for ln in result.stdout.splitlines() if " BROKEN" in ln]
    assert any(ln.startswith(contract) for ln in broken), result.stdout
    assert names in result.stdout, result.stdout

"""The README cannot drift from the code: its opening commands, its command table and every
fenced ``python`` / ``bash`` block are checked here (the blocks by running them in order)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
sys.path.insert(0, str(Path(__file__).parent))
import readme_runner  # noqa: E402


def test_opening_block_is_what_ci_runs() -> None:
    first = re.search(r"```bash\n(.*?)```", README, re.DOTALL)
    assert first is not None
    commands = [ln.split("#")[0].strip() for ln in first.group(1).splitlines()]
    assert commands[:2] == ["make demo", "make test"]
    ci = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert ci[-1] == "make test"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)


def _table_commands() -> list[list[str]]:
    rows = re.findall(r"^\| `edgeinfer ([a-z-]+(?: [a-z]+)?)", README, re.MULTILINE)
    return [row.split() for row in rows]


@pytest.mark.parametrize("words", _table_commands(), ids=" ".join)
def test_every_command_in_the_table_exists(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # "keys init" is a group and its command; "bundle create" too; a lone word a command.
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0, capsys.readouterr().err


def test_raises_convention() -> None:
    code = 'x = 1\nf(x)\n# InputError: input "x": ...\n'
    out = readme_runner.with_raises(code)
    assert "except __import__('edgeinfer').InputError" in out
    assert "    f(x)" in out


def test_blocks_found() -> None:
    langs = [lang for lang, _ in readme_runner.blocks(README)]
    assert langs.count("python") >= 5 and langs.count("bash") >= 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_readme_block_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(Path(readme_runner.__file__)), str(ROOT / "README.md"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=850,
    )
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    assert "every block ran" in done.stdout

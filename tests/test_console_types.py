"""The console's types: graphql-codegen from the committed schema.graphql with the scalar mapping
docs/frontends.md gives, then `tsc --strict` over the console. A schema change that breaks a console
document, or a scalar left unmapped, fails here. Also: docs/frontends.md's TypeScript excerpts are
the console's code, verbatim."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_docs import blocks

ROOT = Path(__file__).resolve().parent.parent
CONSOLE = ROOT / "console"


def _lines(text: str) -> str:
    """Indentation aside (the page shows excerpts dedented)."""
    return "\n".join(line.strip() for line in text.strip().splitlines())


def test_the_frontends_pages_typescript_is_the_consoles_own() -> None:
    sources = [_lines(p.read_text()) for p in [*CONSOLE.glob("*.ts"), *(CONSOLE / "src").glob("*.ts*")]]
    excerpts = [b for b in blocks(ROOT / "docs" / "frontends.md") if b.language == "ts"]
    assert excerpts
    for excerpt in excerpts:
        assert any(_lines(excerpt.code) in source for source in sources), \
            f"docs/frontends.md:{excerpt.line} is not in console/"


def test_the_scalar_table_matches_the_codegen_config() -> None:
    mapping = re.search(r"scalars: \{(.*?)\}", (CONSOLE / "codegen.ts").read_text(), re.S)
    assert mapping is not None
    config = dict(re.findall(r'(\w+): "(\w+)"', mapping.group(1)))
    table = dict(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", (ROOT / "docs" / "frontends.md").read_text(), re.M))
    scalars = set(re.findall(r"^scalar (\w+)", (ROOT / "schema.graphql").read_text(), re.M))
    assert config == table
    assert set(config) == scalars, "every custom scalar of schema.graphql has a TypeScript type"


def test_codegen_and_tsc_strict_accept_the_console() -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the console's types cannot be checked here")
    if not (CONSOLE / "node_modules" / ".bin" / "tsc").exists():
        pytest.skip("console/node_modules is missing: `make console` installs it (npm ci)")
    for script in ("codegen", "typecheck"):
        done = subprocess.run(["npm", "run", "--silent", script], cwd=CONSOLE, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, f"npm run {script}:\n{done.stdout}\n{done.stderr}"
    assert "strict" in (CONSOLE / "tsconfig.json").read_text()

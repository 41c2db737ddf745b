"""Programmatic Alembic configuration for the two chains (there is no alembic.ini)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

Chain = Literal["management", "tenant"]


def alembic_config(chain: Chain, output: io.StringIO | None = None, **attributes: Any) -> Config:
    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR / chain))
    cfg.attributes.update(attributes)
    return cfg


def head_revision(chain: Chain) -> str:
    head = ScriptDirectory.from_config(alembic_config(chain)).get_current_head()
    if head is None:
        raise RuntimeError(f"the {chain} migration chain is empty")
    return head

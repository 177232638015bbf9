"""Files that are replaced whole: written beside the old one, then renamed over it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """A crash mid-write never leaves a half-written file behind: `write` a sibling, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_table(frame: pd.DataFrame, path: Path) -> None:
    replace_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))

"""Opening task data files (shipped package data or a user's path) and reading JSONL rows with line numbers."""
from __future__ import annotations

import contextlib
import importlib.resources
import json
from typing import Iterable, Iterator, Tuple


@contextlib.contextmanager
def open_task_file(name_or_path: str, shipped_names: Iterable[str]) -> Iterator[Tuple[object, str]]:
    """Open a shipped data file by name (from `dipod_jax/lm/tasks/data/`) or any other path.

    Yields (text handle, the path to name in error messages).
    """
    if name_or_path in tuple(shipped_names):
        resource = importlib.resources.files("dipod_jax.lm.tasks").joinpath("data", name_or_path)
        with resource.open("r", newline="") as handle:
            yield handle, str(resource)
    else:
        with open(name_or_path, "r", newline="") as handle:
            yield handle, name_or_path


def jsonl_objects(handle, path: str) -> Iterator[Tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; ValueError naming `path:line` on bad JSON or a
    line that is not a JSON object."""
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
        yield line_number, row

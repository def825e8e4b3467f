"""Reading task data files (shipped package data or a user's path): UTF-8 text, JSONL rows with line numbers,
and short excerpts of bad rows for error messages.

Every problem with a file's content is a ValueError that starts with `path:line:` (or `path:` for the file as
a whole), so a caller can report it in one line.
"""
from __future__ import annotations

import codecs
import importlib.resources
import io
import json
from collections.abc import Iterable, Iterator
from typing import TextIO

# Error messages quote at most this many characters of a bad row (a row can be megabytes long).
EXCERPT_CHARS = 200


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """repr(value), cut to `limit` characters with the full length noted when longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters in all)"


def _line_of_byte(data: bytes, offset: int) -> int:
    """1-based line of byte `offset`, counting "\\n", "\\r\\n" and "\\r" line ends as text mode with newline=""
    does (UTF-8 never uses these bytes inside a multi-byte character)."""
    before = data[:offset]
    return 1 + before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n")


def read_task_file(name_or_path: str, shipped_names: Iterable[str]) -> tuple[TextIO, str]:
    """Reads a shipped data file by name (from `dipod_jax/lm/tasks/data/`) or any other path as UTF-8.

    Returns (an in-memory text stream with line ends kept as in the file, the path to name in messages).
    A leading UTF-8 byte-order mark is dropped.
    Raises ValueError naming the path when the file cannot be read, and `path:line` for bytes that are not UTF-8.
    """
    if name_or_path in tuple(shipped_names):
        resource = importlib.resources.files("dipod_jax.lm.tasks").joinpath("data").joinpath(name_or_path)
        path = str(resource)
        read = resource.read_bytes
    else:
        path = name_or_path

        def read() -> bytes:
            with open(name_or_path, "rb") as handle:
                return handle.read()
    try:
        data = read()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the file ({error.strerror or error})") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}:{_line_of_byte(data, error.start)}: not UTF-8 text (byte "
                         f"0x{data[error.start]:02x}: {error.reason})") from None
    return io.StringIO(text, newline=""), path


def jsonl_objects(handle: TextIO, path: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; ValueError naming `path:line` on bad JSON or a
    line that is not a JSON object."""
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: invalid JSON ({error.msg} at column {error.colno})") from None
        except ValueError as error:  # an integer longer than Python's int/str conversion limit
            raise ValueError(f"{path}:{line_number}: invalid JSON ({error})") from None
        except RecursionError:
            raise ValueError(f"{path}:{line_number}: invalid JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
        yield line_number, row

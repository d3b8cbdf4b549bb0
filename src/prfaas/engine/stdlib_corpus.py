"""The text the trained tiny model learns from and is measured on: the Python standard library's
own top-level `.py` files, read from the running interpreter's `sysconfig` stdlib directory.

The files are sorted by name; every `HELD_OUT_EVERY`-th one (index 0, 8, 16, ...) is held out
and never trained on. Texts become byte tokens (the byte tokenizer's ids 0..255), one file after
another with EOS between files. The split depends only on the file names, so a different patch
release of Python 3.11 shifts the text a little but never mixes held-out files into training.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

HELD_OUT_EVERY = 8


def stdlib_files(stdlib_dir: Path | None = None) -> list[Path]:
    """The standard library's top-level `.py` files, sorted by name."""
    directory = stdlib_dir or Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in directory.glob("*.py") if p.is_file())


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): every HELD_OUT_EVERY-th file is held out."""
    held_out = [p for i, p in enumerate(files) if i % HELD_OUT_EVERY == 0]
    training = [p for i, p in enumerate(files) if i % HELD_OUT_EVERY != 0]
    return training, held_out


def byte_tokens(files: list[Path], eos_token_id: int) -> list[int]:
    """The files' bytes as token ids, EOS after each file."""
    tokens: list[int] = []
    for path in files:
        tokens.extend(path.read_bytes())
        tokens.append(eos_token_id)
    return tokens

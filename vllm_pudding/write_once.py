"""Cache directories written once, whole, by whichever process gets there first.

Why one helper: converted models and benchmark static checkpoints are both large dirs in
the shared cache. Each is written into a temporary sibling and renamed into place, so a
reader never sees half a dir, a process that loses the race keeps the winner's, and a
failed write leaves nothing behind (leaked temporary copies once filled the disk CI uses).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_dir_once(target: Path, marker: str, write: Callable[[Path], None]) -> Path:
    """`target`, made by `write(tmp)` unless `target/marker` exists already."""
    target = Path(target)
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        make_readable(tmp)
        os.replace(tmp, target)  # atomic; fails if another process won the race
    except OSError:
        if not (target / marker).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; else no leftovers
    return target


def make_readable(folder: Path) -> None:
    """mkdtemp/save_file create owner-only modes; give the usual umask ones so a shared
    cache stays readable. Symlinks (to a base model's files) are left alone."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        if not f.is_symlink():
            f.chmod(0o666 & ~umask)

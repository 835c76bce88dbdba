"""An output folder that never holds a mix of two runs.

    with OutputFolder("out/", overwrite=True) as out:   # checked and staged here, before any work
        save_image(x, out.file("x.png"))                # written into a hidden staging folder
        out.commit()                                    # moved into place in one rename

The files are written into a staging folder created next to the target (same file system,
so the move is a rename). `commit` renames it to the target; an existing target is first
renamed aside and deleted only after the new folder is in place. Leaving the `with` block
without `commit` (an error, Ctrl-C) deletes the staging folder and leaves the target as it
was. A non-empty target is refused unless `overwrite` is set.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

__all__ = ["OutputFolder"]


class OutputFolder:
    """A target folder and its staging folder (see the module docstring).

    Args:
        target: the folder the outputs end up in (created with its parents on commit).
        overwrite: replace a non-empty target (default: refuse it).
        option: how the caller calls the target, for messages (e.g. "--out").

    Raises ValueError, naming the target, when it is empty text, an existing file, a path
    under a file, non-empty without `overwrite`, or in a folder that cannot be written.
    """

    def __init__(self, target: str | os.PathLike, *, overwrite: bool = False, option: str = "out"):
        self.option = option
        text = os.fspath(target) if isinstance(target, os.PathLike) else target
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{option}={text!r} is empty; give the folder to write the outputs into")
        path = Path(os.path.abspath(os.path.expanduser(text)))
        if path.is_symlink():
            path = path.resolve()
        self.target = path
        self._check(overwrite)
        parent = self._parent()
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = _new_folder(parent, f".{path.name}.partial-")
        except OSError as err:
            raise ValueError(f"{option} {text!r}: cannot write in {parent} ({_reason(err)})") from None
        self.committed = False

    def _check(self, overwrite: bool) -> None:
        path, option = self.target, self.option
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"{option} {str(path)!r} is an existing file, not a folder")
            if not overwrite and any(path.iterdir()):
                raise ValueError(
                    f"{option} {str(path)!r} is not empty; give --overwrite to replace its contents, or a new folder"
                )
        if path.parent == path:
            raise ValueError(f"{option} {str(path)!r} is a file system root; give a folder inside it")
        cwd = Path(os.getcwd())
        if path == cwd or path in cwd.parents:  # swapping it would pull the folder away from under the shell
            raise ValueError(f"{option} {str(path)!r} is or contains the current folder; give a new folder for the outputs")
        ancestor = path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ValueError(f"{option} {str(path)!r} lies under {str(ancestor)!r}, which is a file")

    def _parent(self) -> Path:
        return self.target.parent

    def file(self, name: str) -> Path:
        """Where to write output `name` now (inside the staging folder)."""
        return self.staging / name

    def final(self, name: str) -> Path:
        """Where output `name` will be after `commit`."""
        return self.target / name

    def commit(self) -> Path:
        """Move the staged outputs into the target; the previous contents are deleted only after
        the new folder is in place. Returns the target."""
        if self.committed:
            return self.target
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self._parent()))
            os.rename(self.target, old / "previous")
        try:
            os.rename(self.staging, self.target)
        except OSError:
            if old is not None:  # put the previous outputs back
                os.rename(old / "previous", self.target)
                shutil.rmtree(old, ignore_errors=True)
            raise
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        """Delete the staging folder (the target is untouched)."""
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new empty folder `parent/prefix<random>` with the usual permissions (umask applied;
    tempfile.mkdtemp would make it private, and the staging folder becomes the output folder)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a new folder {prefix}… in {parent}")


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__

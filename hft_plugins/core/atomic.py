"""Saves that leave either the old output or the new one, never a half-written one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import HFTError

# Temporaries name their host: on a shared filesystem another machine's pids mean nothing.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside ``path`` and rename over it: a crash leaves the old file or the new one."""
    if path.is_dir():
        raise HFTError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """A new directory in ``parent`` with the umask's permissions (mkdtemp's are 0700)."""
    while True:
        path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a staging directory beside ``target``; on success it is renamed into place.

    An existing ``target`` is moved aside, replaced and then removed; on any error the
    staging directory is deleted and ``target`` is untouched. Only for outputs that own
    their whole directory (anything else in ``target`` is replaced with it).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _fresh_dir(target.parent, f".{target.name}.tmp-")
    try:
        yield staging
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale(directory: Path, name: str) -> None:
    """Remove temporaries of ``name`` left by a save on this host whose process died."""
    for path in directory.glob(f".{name}.tmp-*-{_HOST}"):
        pid = path.name.rpartition(".tmp-")[2].partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


@contextlib.contextmanager
def atomic_files(directory: Path, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Yield a temporary path inside ``directory`` for each of ``names``; write them all.

    When the block succeeds each temporary is renamed onto its name, in the order given,
    so the first name is the commit point; on any error the temporaries are removed and
    the previous files stay. Nothing else in ``directory`` is touched. The directory and
    files get the umask's permissions, whatever the writer used (safetensors: 0600).
    """
    if directory.exists() and not directory.is_dir():
        raise HFTError(f"cannot save to {directory}: it is a file")
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        _remove_stale(directory, name)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}-{_HOST}"
    temporaries = {name: directory / f".{name}.tmp-{tag}" for name in names}
    try:
        modes = {}
        for path in temporaries.values():
            path.touch(exist_ok=False)  # created as open() creates: 0666 less the umask
            modes[path] = stat.S_IMODE(path.stat().st_mode)
        yield temporaries
        for path, mode in modes.items():
            os.chmod(path, mode)
        for name in names:
            os.replace(temporaries[name], directory / name)
    finally:
        for path in temporaries.values():
            path.unlink(missing_ok=True)

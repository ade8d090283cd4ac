"""Helpers the demo and the benchmarks share: output directories, seeds, progress, memory."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from hft_plugins import HFTError


def writable_dir(path, what: str = "output directory") -> Path:
    """Create ``path`` if needed and prove it writable, else one-line HFTError."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".hft-write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise HFTError(f"{what} {out} is not writable: {exc.strerror or exc}") from None
    return out


def parse_seeds(text) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; an empty list or a non-integer is a one-line HFTError."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise HFTError("the seed list is empty; give seeds like 0,1,2,3,4")
    seeds = []
    for item in items:
        if not item.isdigit():
            raise HFTError(f"seed {item!r} is not a non-negative integer")
        seeds.append(int(item))
    if len(set(seeds)) != len(seeds):
        raise HFTError(f"a seed is listed twice in {text}")
    return seeds


def check_names(names, known, what: str) -> tuple[str, ...]:
    """Validate ``what`` names (method, task) against ``known``; one-line HFTError naming
    the first unknown one, an empty list or a repeat."""
    names = tuple(names)
    if not names:
        raise HFTError(f"the {what} list is empty; known {what}s: " + ", ".join(known))
    for name in names:
        if name not in known:
            raise HFTError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise HFTError(f"a {what} is listed twice in {','.join(names)}")
    return names


def parse_names(text) -> list[str]:
    return [s.strip() for s in str(text).split(",") if s.strip()]


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr (the demo's and benchmark's progress)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)


def rss_bytes() -> int:
    """This process's resident memory now (psutil: the one reader of it in the harness)."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """This process's highest resident memory so far: the kernel's high-water mark."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak_delta`` is the rise in bytes.

    CPU training has no allocator counter like CUDA's, so a 20 ms sampler is the honest
    approximation; the optimizer state bytes reported beside it are exact.
    """

    def __init__(self, interval: float = 0.02):
        self._interval = interval
        self._stop = threading.Event()
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def peak_delta(self) -> int:
        return self.peak - self.start

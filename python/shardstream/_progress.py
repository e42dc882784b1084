"""progress=: None, True (a tqdm bar when tqdm is installed) or a callable(bytes_done, bytes_total)."""

from __future__ import annotations

from typing import Callable, Union

ProgressArg = Union[None, bool, Callable[[int, int], object]]


class _Bar:
    def __init__(self, total: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                         leave=False)
        self._last = 0

    def __call__(self, done: int, total: int) -> None:
        if done > self._last:
            self._bar.update(done - self._last)
            self._last = done

    def close(self) -> None:
        self._bar.close()


def make(progress: ProgressArg, total: int, desc: str = "shardstream"):
    """(callback or None, close function)."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        try:
            bar = _Bar(total, desc)
        except ImportError:
            return None, lambda: None
        return bar, bar.close
    if not callable(progress):
        raise TypeError("progress must be None, a bool or a callable(bytes_done, bytes_total)")
    return progress, lambda: None

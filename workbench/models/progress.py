"""A tqdm progress bar over a training loop's epochs or steps, with the latest numbers beside it.

``progress=True`` shows the bar, ``False`` hides it, ``None`` lets tqdm decide (shown on a
terminal, hidden when the output is not one, as under pytest's capture).
"""
from __future__ import annotations

from tqdm.auto import tqdm


class _Bar:
    def __init__(self, total: int, desc: str, progress: bool | None):
        disable = None if progress is None else not progress
        self._bar = tqdm(total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, **numbers: float) -> None:
        """Advance by ``n`` and show ``numbers`` (name=value) beside the bar."""
        if self._bar.disable:
            return
        if numbers:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in numbers.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def progress_bar(total: int, desc: str, progress: bool | None = False) -> _Bar:
    return _Bar(total, desc, progress)

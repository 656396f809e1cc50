"""A tqdm progress bar over a long loop (epochs, steps, or rows written and read), with the
latest numbers beside it: the one bar that datasets, runners and training loops show.

``progress=True`` shows the bar, ``False`` hides it, ``None`` lets tqdm decide (shown on a
terminal, hidden when the output is not one, as under pytest's capture).

    with progress_bar(epochs, "GCN on the runner", progress=True) as bar:
        for epoch in range(epochs):
            ...
            bar.update(loss=loss, seconds=seconds)   # epoch k/epochs, elapsed time, loss, seconds
"""
from __future__ import annotations

from tqdm.auto import tqdm


class ProgressBar:
    """A tqdm bar with the latest numbers beside it. ``progress=True`` shows it, ``False`` hides
    it, ``None`` lets tqdm decide (shown on a terminal, hidden when the output is not one, as
    under pytest's capture). ``total=None``: a count without a percentage."""

    def __init__(self, total: int | None, desc: str, progress: bool | None = False, unit: str = "it"):
        disable = None if progress is None else not progress
        scaled = unit != "it" and (total is None or total >= 10_000)  # 1.05M rows, but 10/10 rows
        self._bar = tqdm(total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True,
                         unit=unit if unit == "it" else f" {unit}", unit_scale=scaled)  # 12.8k rows

    def update(self, n: int = 1, **numbers) -> None:
        """Advance by ``n`` and show ``numbers`` (name=value) beside the bar."""
        if self._bar.disable:
            return
        if numbers:
            self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else str(v)
                                   for k, v in numbers.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if not self._bar.disable:
            self._bar.refresh()  # the last numbers are written once, however fast the steps were
        self._bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, progress: bool | None = False, unit: str = "it") -> ProgressBar:
    """A bar over ``total`` steps (epochs, or ``unit="rows"``: rows written or read)."""
    return ProgressBar(total, desc, progress, unit)

"""The search's live progress bar at a terminal (the driver prints plain lines elsewhere)."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """A rich progress bar (trials done, failures, pruned, front size, hypervolume); silent when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        self.total, self.done = total, done
        self._progress: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self._progress.start()
            self._task = self._progress.add_task("search", total=self.total, completed=self.done, info="")
        return self

    def update(self, done: int, failed: int, front: int, hypervolume: float, pruned: int = 0) -> None:
        if self._progress is not None:
            stopped = f"pruned {pruned} | " if pruned else ""
            self._progress.update(self._task, completed=done, info=f"failed {failed} | {stopped}front {front} | HV {hypervolume:.4f}")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

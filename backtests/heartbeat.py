"""A progress line every so often when output is piped, so a long step never looks hung.

Rich draws its progress bars only on a terminal: with ``metabt backtest ... |
tee log`` or under a scheduler, meta-training and the test period print
nothing for minutes. While a command runs with stdout not a terminal,
:class:`Heartbeat` prints one plain line every ``METABT_PROGRESS_EVERY``
seconds (default 30): the time elapsed and the last step metabt's modules
logged (e.g. ``meta-training maml on 2100 anchors ...``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from typing_extensions import Self

ENV = "METABT_PROGRESS_EVERY"
_LOGGERS = ("metabt",)  # every module logs under metabt.<folder>.<module>


class _LastStep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text = "starting"

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()[:120]


class Heartbeat:
    """Context manager: while inside, print a progress line every ``every`` seconds.

    Parameters
    ----------
    console : Console
        Where the lines go (the command's own output).
    every : float, optional
        Seconds between lines; default from ``METABT_PROGRESS_EVERY`` or 30.
    enabled : bool, optional
        Default: only when ``console`` is not a terminal (a terminal has live bars).
    step : str, optional
        What is running, shown until a module logs a step of its own.
    """

    def __init__(
        self,
        console: Console,
        every: float | None = None,
        enabled: bool | None = None,
        step: str = "starting",
    ) -> None:
        self.console = console
        self.every = every if every is not None else float(os.environ.get(ENV, "30"))
        self.enabled = (not console.is_terminal) if enabled is None else enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler = _LastStep()
        self._handler.text = step
        self._levels: dict[str, int] = {}

    def _beat(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every):
            self.console.print(
                f"  ... still working, {time.monotonic() - t0:.0f} s: {self._handler.text}",
                highlight=False,
            )

    def __enter__(self) -> Self:
        if self.enabled and self.every > 0:
            for name in _LOGGERS:
                logger = logging.getLogger(name)
                self._levels[name] = logger.level
                if logger.getEffectiveLevel() > logging.INFO:
                    logger.setLevel(logging.INFO)
                logger.addHandler(self._handler)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            for name, level in self._levels.items():
                logger = logging.getLogger(name)
                logger.removeHandler(self._handler)
                logger.setLevel(level)

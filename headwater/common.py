"""What every command shares: typed errors become one-line messages, and quiet logging."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

import typer

from attribution.errors import HeadwaterError, first_line, is_out_of_memory

F = TypeVar("F", bound=Callable)


def clean_errors(func: F) -> F:
    """Report headwater's typed errors, and running out of memory anywhere, as ``error: ...`` with exit code 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HeadwaterError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from err
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            typer.echo(f"error: out of memory ({type(err).__name__}: {first_line(err)}); give the process "
                       "more memory, or lower the batch and sample flags of this command (see --help)", err=True)
            raise typer.Exit(code=2) from err

    return wrapper  # type: ignore[return-value]


def command_group(help: str, **settings) -> typer.Typer:
    """A command group with plain (Click) help: whole option names at 80 columns, where rich's panels cut them."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None, **settings)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet_libraries)


NOISY = ("bm25s", "sentence_transformers", "httpx")
"""Libraries whose info and debug lines are noise here (bm25s sets its own logger to DEBUG when imported)."""


def quiet_libraries(record: logging.LogRecord) -> bool:
    """A handler filter: warnings and errors of :data:`NOISY` libraries only, whenever they were imported."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] not in NOISY


class StepLog:
    """Progress as log lines, for output that is no terminal (where progress bars are off): one line every
    ``1/lines`` of ``total`` steps, with the loss and the time so far and to go."""

    def __init__(self, total: int, label: str, lines: int = 20) -> None:
        self.total, self.label, self.every = total, label, max(1, total // lines)
        self.done, self.started = 0, time.perf_counter()

    def step(self, loss: float) -> None:
        self.done += 1
        if self.done % self.every and self.done != self.total:
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * (self.total - self.done)
        logging.getLogger("headwater").info("%s: step %d/%d, loss %.3f, %.0f s so far, about %.0f s to go",
                                            self.label, self.done, self.total, loss, elapsed, left)

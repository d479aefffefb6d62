"""The ``headwater`` command line: thin wrappers over the importable library.

Every command turns a ``HeadwaterError`` into a one-line message on stderr and exit
code 2, so scripts can tell bad input from a crash.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from attribution.errors import HeadwaterError

app = typer.Typer(help="headwater: which training examples drive this language model's output?",
                  no_args_is_help=True, pretty_exceptions_enable=False)
demo_app = typer.Typer(help="Build the embedded demo (corpus, tokenizer, data, mini-Pythia).", no_args_is_help=True)
data_app = typer.Typer(help="Inspect training data.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
app.add_typer(data_app, name="data")

F = TypeVar("F", bound=Callable)


def clean_errors(func: F) -> F:
    """Report headwater's typed errors as ``error: ...`` with exit code 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HeadwaterError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from err

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@demo_app.command("build")
@clean_errors
def demo_build(
    out: Annotated[Path, typer.Option(help="Directory to build the demo in.")] = Path("demo-data"),
    preset: Annotated[str, typer.Option(help="Settings preset: 'default' (minutes) or 'tiny' (seconds).")] = "default",
    seed: Annotated[int | None, typer.Option(help="Seed for every random choice.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    people: Annotated[int | None, typer.Option(help="Fictional people with planted facts.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Build corpus, tokenizer, Megatron data and the mini-Pythia; skip what is built and valid."""
    from tqdm import tqdm

    from demo.build import build_demo
    from demo.config import preset as make_preset

    setup_logging(verbose)
    config = make_preset(preset, seed=seed, steps=steps, people=people)
    with tqdm(total=config.steps, desc="training", unit="step", disable=None) as bar:

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        info = build_demo(out, config, on_step)
    acc = info["fact_accuracy"]
    typer.echo(f"demo built in {out} (final revision {info['final_revision']}, trained in {info['train_seconds']}s)")
    for split, scores in acc.items():
        typer.echo(f"  fact accuracy on {split.replace('_', ' ')}: first token {scores['first_token']:.1%}, "
                   f"whole completion {scores['whole_completion']:.1%}")


@data_app.command("show")
@clean_errors
def data_show(
    prefix: Annotated[Path, typer.Argument(help="Megatron data prefix (PREFIX.idx + PREFIX.bin or pieces).")],
    rows: Annotated[str | None, typer.Option(help="Row range A:B (half-open).")] = None,
    step: Annotated[int | None, typer.Option(help="Show the rows consumed at this training step.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per step (default: layout.json, else 1024).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer dir or hub id, to decode text.")] = None,
) -> None:
    """Print training rows as JSON lines: {"row", "step", "batch_pos", "tokens", "text"}."""
    from indexer.batches import show_rows

    for record in show_rows(prefix, rows=rows, step=step, batch_size=batch_size, tokenizer=tokenizer):
        typer.echo(json.dumps(record))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

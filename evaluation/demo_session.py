"""Sessions over a built demo."""

from __future__ import annotations

from pathlib import Path

from attribution.config import AttributionConfig
from attribution.models import load_tokenizer
from attribution.session import AttributionSession
from evaluation.demo_rows import demo_examples
from indexer.training_rows import RowRange


def demo_session(demo_dir: str | Path, config: AttributionConfig | None = None, rows: RowRange | None = None,
                 **kwargs) -> AttributionSession:
    """An in-memory session over the training rows of a built demo (see ``headwater demo build``);
    ``kwargs`` go to :meth:`AttributionSession.from_examples`."""
    demo_dir = Path(demo_dir)
    tokenizer = load_tokenizer(demo_dir / "tokenizer")
    examples = list(demo_examples(demo_dir, rows, tokenizer))
    return AttributionSession.from_examples(demo_dir / "model", examples, config, **kwargs)

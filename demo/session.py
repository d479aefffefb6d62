"""Sessions over a built demo, and where a demo lives relative to an index built from it."""

from __future__ import annotations

from pathlib import Path

from attribution.config import AttributionConfig
from attribution.models import load_tokenizer
from attribution.session import AttributionSession
from demo.groundtruth import demo_examples
from indexer.training_rows import RowRange


def demo_session(demo_dir: str | Path, config: AttributionConfig | None = None, rows: RowRange | None = None,
                 **kwargs) -> AttributionSession:
    """An in-memory session over the training rows of a built demo (see ``headwater demo build``);
    ``kwargs`` go to :meth:`AttributionSession.from_examples`."""
    demo_dir = Path(demo_dir)
    tokenizer = load_tokenizer(demo_dir / "tokenizer")
    examples = list(demo_examples(demo_dir, rows, tokenizer))
    return AttributionSession.from_examples(demo_dir / "model", examples, config, **kwargs)


def demo_dir_of(model: str | Path) -> Path | None:
    """The built demo an index's model comes from (the model's parent, holding ``facts.jsonl``), or None."""
    parent = Path(model).parent
    return parent if (parent / "facts.jsonl").is_file() else None


def indexed_demo(manifest) -> Path | None:
    """The built demo whose planted facts are ground truth for an index (a :class:`~indexer.manifest.Manifest`): its
    model comes from that demo and every indexed part's data lies inside it. An index of other data made with the
    demo's model has none (its rows do not state the facts)."""
    demo = demo_dir_of(manifest.config.model)
    if demo is None:
        return None
    parts = manifest.counts.parts or [{"data": manifest.config.data}]
    root = demo.resolve()
    inside = all(Path(part["data"]).resolve().is_relative_to(root) for part in parts)
    return demo if inside else None

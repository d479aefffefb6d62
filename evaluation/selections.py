"""How an unlearning ablation (and the tail-patch check) selects training rows: one name per way.

Kept free of heavy imports, so the command line can offer the names as defaults without loading torch.
"""

from __future__ import annotations

from enum import StrEnum


class Selection(StrEnum):
    """How ``k`` rows are chosen for one target (docs/EVALUATION.md §3)."""

    GRADIENT = "gradient"
    """The attribution's top k."""
    GRADIENT_CONTRASTIVE = "gradient_contrastive"
    """The same rows, ascended with the related prompts' gradient directions projected out."""
    BM25 = "bm25"
    EMBEDDING = "embedding"
    UNLEARNING = "unlearning"
    """The reverse direction's top k: the rows the model is most perplexed about after an ascent on the target
    (``Method.UNLEARNING``; best on removal-and-retrain)."""
    UNLEARNING_CONTRASTIVE = "unlearning_contrastive"
    """The reverse direction's top k with the target's related prompts as controls, their direction projected out of
    the ascent (for a task target: the related tasks as one control task) — worsen this target, not its neighbours.
    Opt-in."""
    BOTTOM = "bottom"
    """Lowest gradient scores."""
    ORACLE = "oracle"
    """Rows that state the fact, where ground truth exists."""
    GIVEN = "given"
    """The rows a client wants checked: the target's ``example_ids``."""
    RANDOM = "random"
    """Random draws (many per seed)."""


OPT_IN_SELECTIONS = (Selection.GIVEN, Selection.UNLEARNING_CONTRASTIVE)
"""Selections an ablation runs only when asked: given needs example_ids; the contrastive unlearning one costs a
second search per target."""
DEFAULT_SELECTIONS = tuple(s for s in Selection if s not in OPT_IN_SELECTIONS)
"""What an ablation ascends on by default."""

TAILPATCH_SELECTIONS = tuple(s for s in Selection if s not in (Selection.BOTTOM, Selection.GIVEN,
                                                               Selection.UNLEARNING_CONTRASTIVE))
"""Selections the tail-patch check offers (every one but bottom, given and the contrastive unlearning one)."""

MATRIX_SELECTIONS = frozenset(Selection) - {Selection.BOTTOM, Selection.RANDOM}
"""Selections whose cross-target rows are reported (random draws are summarized, not one matrix each)."""


FIELD_LDS_ESTIMATORS = ("gradient-ip/none", "gradient-ip/inverse", "gradient-ip/block", "gradient-ip/kfac",
                        "gradient-ip/ekfac", "gradient-ip/ekfac_basis", "gradient-ip/ekfac_basis@d0.1",
                        "gradient/ekfac_basis", "gradient/block", "gradient/inverse_sqrt", "gradient-ip/block@64",
                        "gradient-ip/ekfac_basis@64", "gradient-ip/ekfac_basis@64@d0.1", "gradient-ip/ekfac_basis@256",
                        "gradient-ip/ekfac_basis@256@d0.1", "gradient-ip/ekfac_basis@256@d0.001", "bm25",
                        "unlearning", "tracin-ip/block", "newton", "newton@c100@bm25", "newton@c300@bm25",
                        "unlearning@newton", "newton@ekfac@warm@i0@r1000@d0.1", "magic")
"""The estimators ``headwater eval field-lds`` compares by default (grammar: evaluation.field_lds; the two-stage
``newton@cN@bm25`` masked from ``newton``'s scores, no second solve; ``newton@ekfac@warm@i0@r1000@d0.1`` EK-FAC over
every parameter fitted on up to 1,000 rows, every row of both first cases: headwater's best from scratch)."""

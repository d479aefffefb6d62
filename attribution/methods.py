"""The served methods, in one registry: ``METHODS``, as :mod:`attribution.curvature`'s ``KINDS`` is for curvature.

Each entry says what the method's score means, whether a query runs the (shared) model, whether control prompts
change its answer, which per-query options it takes (the HTTP request's fields of the same names), its named
variants (option presets the web page offers), and how a session builds its retriever. The service, its
``GET /v1/index`` and the web page read the list from here.

Adding a method: a retriever (a class with ``name`` and ``search(query, k, filters)``, see
:class:`attribution.retrievers.Retriever`), a member of :class:`~attribution.retrievers.Method`, and one entry below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from attribution.config import AttributionConfig
from attribution.encoder import GradientEncoder
from attribution.errors import ConfigError
from attribution.retrievers import GradientRetriever, HybridRetriever, Method, Retriever
from attribution.rows import RowTable
from attribution.unlearning import UnlearningRetriever


class Sources(Protocol):
    """What a method's builder reads (``attribution.session.AttributionSession`` is one): the session's parts."""

    encoder: GradientEncoder
    texts: Any
    metadata: RowTable
    config: AttributionConfig
    builders: dict[Method, Callable[[], Retriever]]

    @property
    def gradient(self) -> GradientRetriever: ...

    def retriever(self, method: Method | str) -> Retriever: ...


@dataclass(frozen=True)
class Variant:
    """A named preset of a method's options (the page lists it as ``METHOD:NAME``)."""

    name: str
    label: str
    options: dict[str, str]


@dataclass(frozen=True)
class MethodSpec:
    """One served method."""

    score: str
    """What a result's score is (the page shows it under the results)."""
    uses_model: bool
    """A query runs the shared, hooked language model, so such queries take turns (``unlearning`` even changes its
    weights, restoring them before the query returns)."""
    takes_controls: bool
    """Control prompts change the answer (a contrastive query, the unlearning correction)."""
    build: Callable[[Sources], Retriever]
    """The session's retriever for it (built on first use)."""
    options: tuple[str, ...] = ()
    """Per-query settings only this method takes (request fields of these names)."""
    variants: tuple[Variant, ...] = field(default=())


def stored(method: Method) -> Callable[[Sources], Retriever]:
    """A retriever the index (or the in-memory session) provides: the session's builder for it."""

    def build(session: Sources) -> Retriever:
        builder = session.builders.get(method)
        if builder is None:
            raise ConfigError(f"this session has no {method.value} retriever (its index was built without one)")
        return builder()

    return build


def hybrid(session: Sources) -> Retriever:
    scoring = session.config.scoring
    return HybridRetriever(session.gradient, session.retriever(Method.BM25), session.retriever(Method.EMBEDDING),
                           candidates=scoring.hybrid_candidates, fusion=scoring.hybrid_fusion)


def unlearning(session: Sources) -> Retriever:
    return UnlearningRetriever(session.encoder, session.texts, session.metadata, session.retriever,
                               session.config.unlearning)


METHODS: dict[Method, MethodSpec] = {
    Method.UNLEARNING: MethodSpec(
        "the row's mean loss increase in nats per token after a small move against the target (higher: the model "
        "got more perplexed about the row)",
        uses_model=True, takes_controls=True, build=unlearning, options=("steps", "budget", "candidates", "direction"),
        variants=(Variant("newton", "Newton step", {"direction": "newton"}),)),
    Method.GRADIENT: MethodSpec(
        "cosine between the query's and the row's projected loss gradients (−1 to 1; the row's best window); on an "
        "index built at several revisions, their weighted mean over the checkpoints (TracIn-CP)",
        uses_model=True, takes_controls=True, build=lambda session: session.gradient),
    Method.BM25: MethodSpec("BM25 lexical overlap with the prompt and completion (unbounded)",
                            uses_model=False, takes_controls=False, build=stored(Method.BM25)),
    Method.EMBEDDING: MethodSpec("cosine between sentence embeddings of the query and the row's best chunk (−1 to 1)",
                                 uses_model=False, takes_controls=False, build=stored(Method.EMBEDDING)),
    Method.HYBRID: MethodSpec("gradient cosine of BM25 and embedding candidates (or their rank fusion)",
                              uses_model=True, takes_controls=True, build=hybrid),
}

OPTIONS = tuple(dict.fromkeys(option for spec in METHODS.values() for option in spec.options))
"""Every method-specific query option, in registry order."""


def owners(option: str) -> list[Method]:
    """The methods that take a query option."""
    return [method for method, spec in METHODS.items() if option in spec.options]

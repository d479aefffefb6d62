"""Request and response bodies of the HTTP API (pydantic; they are the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from attribution.ascent import Probe
from attribution.config import Direction, field_help
from attribution.filters import subsets_of
from attribution.methods import METHODS, OPTIONS, owners
from attribution.records import Evidence
from attribution.records import Result as Attributed
from attribution.retrievers import Method
from attribution.tasks import MAX_INSTANCES
from evaluation.selections import DEFAULT_SELECTIONS, Selection
from evaluation.targets import Target


def check_method_options(method: Method, controls: list[str], given: list[str]) -> None:
    """Refuse (ValueError) control prompts to a method that ignores them and a method's own options (``given``:
    request fields of ``attribution.methods.OPTIONS``) to any other method."""
    if controls and not METHODS[method].takes_controls:
        using = ", ".join(m.value for m, spec in METHODS.items() if spec.takes_controls)
        raise ValueError(f"controls: method {method.value} ignores control prompts; drop them or use {using}")
    foreign = [name for name in given if name not in METHODS[method].options]
    if foreign:
        using = ", ".join(dict.fromkeys(m.value for name in foreign for m in owners(name)))
        raise ValueError(f"{', '.join(foreign)}: only method {using} takes them; drop them or use {using}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterSpec(Strict):
    pile_set_name: str | None = Field(None, max_length=200, examples=["Planted Facts"],
                                      description="Keep rows holding text of this subset (GET /v1/index lists them).")
    step_min: int | None = Field(None, ge=0, strict=True)
    step_max: int | None = Field(None, ge=0, strict=True)

    @model_validator(mode="after")
    def ordered_steps(self) -> FilterSpec:
        if self.step_min is not None and self.step_max is not None and self.step_min > self.step_max:
            raise ValueError(f"step_min {self.step_min} is greater than step_max {self.step_max}")
        return self


class TaskInstance(Strict):
    """One instance of a task."""

    prompt: str = Field(..., min_length=1, max_length=20_000)
    completion: str | None = Field(None, min_length=1, max_length=5_000,
                                   description="Omitted: the model's own greedy continuation.")

    @field_validator("prompt")
    @classmethod
    def prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must contain non-whitespace text")
        return value


class AttributeRequest(Strict):
    """One attribution query: a prompt (and completion), or a task (several instances of one behaviour)."""

    prompt: str | None = Field(None, min_length=1, max_length=20_000, examples=["Joachim Fairweather was born in"],
                               description="The query's prompt (or give task instead).")
    completion: str | None = Field(None, min_length=1, max_length=5_000, examples=[" Thornbury"],
                                   description="Omitted: the model's own greedy continuation is attributed.")
    task: list[TaskInstance] | None = Field(None, min_length=1, max_length=MAX_INSTANCES,
                                            description="A task in place of prompt/completion: 1-256 instances of one "
                                            "behaviour, answered as one (each result names the instances it serves "
                                            "most; the response's aggregation says how the method combined them).")
    control_task: list[TaskInstance] | None = Field(None, min_length=1, max_length=MAX_INSTANCES,
                                                    description="With task: instances of a neighbouring task whose "
                                                    "direction is taken out (hurt this task, not that one).")
    k: int = Field(10, ge=1, strict=True, description="Number of examples to return (at most the server's max_k).")
    method: Method | None = Field(None, description="Which retriever ranks the training examples. Omitted: the "
                                  "server's default_method (GET /v1/index says which and why: unlearning, best on "
                                  "removal-and-retrain and LDS, where it answers quickly, else gradient).")
    filters: FilterSpec = Field(default_factory=FilterSpec)
    controls: list[str] = Field(default_factory=list, description="Control prompts (same relation, other "
                                "subjects) for a contrastive query; their completions are the model's own.")
    steps: int | None = Field(None, ge=1, le=10, strict=True, description="unlearning only: normalized ascent "
                              "steps on the target (default: the server's, 3).")
    budget: float | None = Field(None, gt=0, le=10, allow_inf_nan=False, description="unlearning only: total "
                                 "parameter move ‖Δθ‖ of the ascent (default: the server's, 0.5).")
    candidates: int | None = Field(None, ge=1, le=500, strict=True, description="unlearning only: rows taken "
                                   "from each of gradient, bm25 and embedding to re-rank on a large index.")
    direction: Direction | None = Field(None, description="unlearning only: ascent (steps of gradient ascent, the "
                                        "default) or newton (one step along the curvature-refined direction "
                                        "(G + λ)⁻¹ g, rows read by a central difference; slower, and more right on "
                                        "field-protocol LDS: README, 'What the results show').")
    token_evidence: bool = Field(False, strict=True, description="unlearning: also return each result row's "
                                 "tokens and their loss increases (row_tokens, loss_increase; a float per token, so "
                                 "off unless asked).")

    @field_validator("prompt")
    @classmethod
    def prompt_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("prompt must contain non-whitespace text")
        return value

    @field_validator("controls")
    @classmethod
    def controls_not_blank(cls, value: list[str]) -> list[str]:
        if any(not c.strip() or len(c) > 20_000 for c in value):
            raise ValueError("every control prompt must be non-blank and at most 20000 characters")
        return value

    @model_validator(mode="after")
    def one_query(self) -> AttributeRequest:
        if (self.prompt is None) == (self.task is None):
            raise ValueError("give prompt (one query) or task (its instances), not both and not neither")
        if self.task is not None and (self.completion is not None or self.controls):
            raise ValueError("a task query takes its completions in task and its controls as control_task; drop "
                             "completion and controls")
        if self.control_task is not None:
            if self.task is None:
                raise ValueError("control_task goes with task; for one prompt give controls")
            if {(i.prompt, i.completion) for i in self.control_task} == {(i.prompt, i.completion) for i in self.task}:
                raise ValueError("control_task is the task itself: give instances of a neighbouring task")
        return self

    @model_validator(mode="after")
    def options_fit_the_method(self) -> AttributeRequest:
        if self.method is not None:  # omitted: checked once the server's default is known
            check_method_options(Method(self.method), self.controls or self.control_task or [], self.options_given())
        return self

    def options_given(self) -> list[str]:
        """The method-specific options (``attribution.methods.OPTIONS``) this request sets."""
        return [name for name in OPTIONS if getattr(self, name) is not None]


TOKEN_EVIDENCE = " Only with token_evidence."


class Span(BaseModel):
    start: int
    end: int


class InstanceShare(BaseModel):
    instance: int = Field(description="Index into the request's task.")
    contribution: float = Field(description="gradient: the row's share of the task vector; rank fusion: the "
                                "instance's reciprocal-rank term; unlearning: the instance's signed share of the "
                                "row's first-order loss change (absolute shares sum to 1).")


def evidence_doc(name: str, only: str = "") -> str:
    """The description of an evidence field: its docstring on ``attribution.records.Evidence`` (and ``only``)."""
    return f"{field_help(Evidence, name)}{only}"


class Result(BaseModel):
    rank: int
    example_id: int
    score: float
    text: str
    span: Span | None = Field(None, description="Character range of the matched window or overlap in text.")
    source: str | None
    row: int | None
    step: int | None
    batch_pos: int | None
    pile_set_name: str | None
    pile_set_names: list[str] = Field(default_factory=list, description="Every subset the row holds text of.")
    span_pile_set_name: str | None = Field(None, description="The subset of the matched span, when known.")
    token_contributions: list[float] | None = Field(None, description=evidence_doc("token_contributions"))
    completion_tokens: list[str] | None = Field(None, description=evidence_doc("completion_tokens"))
    loss_increase: list[float] | None = Field(None, description=evidence_doc("loss_increase", TOKEN_EVIDENCE))
    row_tokens: list[str] | None = Field(None, description=evidence_doc("row_tokens", TOKEN_EVIDENCE))
    instances: list[InstanceShare] | None = Field(None, description=evidence_doc("instances"))

    @classmethod
    def from_record(cls, record: Attributed, span: Span | None, span_pile_set_name: str | None,
                    token_evidence: bool = False) -> Result:
        """The response row of an attributed record: its provenance from its metadata, its evidence (the row's
        tokens only with ``token_evidence``); ``span``, characters of its text, stands for its ``token_span``."""
        meta = record.metadata
        return cls(rank=record.rank, example_id=record.example_id, score=record.score, text=record.text, span=span,
                   source=meta.get("source"), row=meta.get("row"), step=meta.get("step"),
                   batch_pos=meta.get("batch_pos"), pile_set_name=meta.get("pile_set_name"),
                   pile_set_names=subsets_of(meta), span_pile_set_name=span_pile_set_name,
                   token_contributions=record.token_contributions, completion_tokens=record.completion_tokens,
                   loss_increase=record.loss_increase if token_evidence else None,
                   row_tokens=record.row_tokens if token_evidence else None,
                   instances=None if record.instances is None else
                   [InstanceShare(instance=i, contribution=c) for i, c in record.instances])


class AttributeResponse(BaseModel):
    prompt: str = Field(description="The prompt (a task: its first instance's).")
    completion: str
    method: str
    results: list[Result]
    task: list[TaskInstance] | None = Field(None, description="A task query: its instances, completions filled in.")
    aggregation: str | None = Field(None, description="A task query: how the method combined its instances.")
    timings_ms: dict[str, float]
    note: str | None = Field(None, description="Why there are fewer results than asked for, when there are.")


class Example(BaseModel):
    example_id: int
    text: str
    source: str | None
    row: int | None
    step: int | None
    batch_pos: int | None
    pile_set_name: str | None
    pile_set_names: list[str] = []
    token_count: int


class StepExample(BaseModel):
    example_id: int
    batch_pos: int | None
    pile_set_name: str | None
    token_count: int


class StepResponse(BaseModel):
    step: int
    examples: list[StepExample]
    subsets: dict[str, int]


class DefaultQuery(BaseModel):
    """A query to try first (the page's and ``headwater serve``'s example): a planted fact of the demo on an index of
    the demo's data, else the start of one of the index's own rows and the word that follows."""

    prompt: str
    completion: str
    fact_id: str | None = Field(description="The planted fact (None: drawn from an indexed row).")
    model_correct: bool = Field(description="The model's greedy decoding reproduces the completion (else: the "
                                            "candidate it gets most tokens of).")


class UnlearningCostInfo(BaseModel):
    """What an uncached ``unlearning`` query costs on this index and device: estimated at load, then measured."""

    rows: int = Field(description="Rows a query re-scores at most (every row of a small index, else candidates).")
    row_tokens: int = Field(description="Tokens of a typical indexed row, as scored.")
    estimate_seconds: float | None = Field(description="From the pass timed at load (None: it failed).")
    measured_queries: int = Field(description="Unlearning queries served so far whose passes were measured.")
    measured_seconds: float | None = Field(description="The same estimate with the seconds per row those queries "
                                           "took (None before the first); auto uses it once there is one.")


class MethodVariantInfo(BaseModel):
    name: str = Field(description="The page offers it as METHOD:NAME.")
    label: str
    options: dict[str, str] = Field(description="The request fields it sets.")


class MethodInfo(BaseModel):
    """One method a query may name (``attribution.methods.METHODS``)."""

    name: Method
    score: str = Field(description="What a result's score is.")
    uses_model: bool = Field(description="A query runs the shared model (such queries take turns).")
    takes_controls: bool = Field(description="Control prompts change the answer.")
    options: list[str] = Field(description="Request fields only this method takes.")
    variants: list[MethodVariantInfo]


class IndexInfo(BaseModel):
    build: str
    model: str
    revisions: list[str | None]
    examples: int
    data: dict
    projection: dict
    preconditioner: list
    embedding_model: str
    created: str
    subsets: dict[str, int] = Field(description="Pile subset → rows holding text of it (the filter's choices).")
    steps: list[int] | None = Field(description="First and last training step of the indexed rows.")
    default_query: DefaultQuery | None = Field(description="A planted fact the model gets right (demo indexes).")
    default_method: Method = Field(description="The method of a query that names none.")
    default_method_reason: str = Field(description="Why: the server's setting, or auto's estimate of an unlearning "
                                       "query's cost here.")
    unlearning_cost: UnlearningCostInfo
    methods: list[MethodInfo] = Field(description="Every method a query may name, with what its score means.")


class Health(BaseModel):
    status: Literal["ok"]
    ready: bool
    examples: int | None = None


class ErrorBody(BaseModel):
    error: str


class AblationCheck(BaseModel):
    """One check of an ablation's evidence checklist (docs/EVALUATION.md §3), over every budget."""

    name: str = Field(examples=["beats_random"])
    label: str = Field(examples=["beats random"])
    status: Literal["passed", "failed", "not run"]
    reason: str = Field(description="What was measured against what threshold, or what the check needs to run.")
    budgets: dict[str, Literal["passed", "failed", "not run"]] = Field(description="Its status at each budget.")


class AblationVerdict(BaseModel):
    """The one verdict on a tested selection, from the full checklist: what the page and ``headwater ablate`` show."""

    method: str = Field(examples=["given"])
    verdict: Literal["supported", "not supported", "inconclusive"] = Field(
        description="supported: every check passed at the same ≥ 2 budgets; not supported: a check failed; "
                    "inconclusive: none failed but some could not run.")
    reason: str = Field(description="Which checks failed, or could not run.")
    explanation: str = Field(description="What the verdict does and does not show.")
    passing_budgets: list[str]
    checks: list[AblationCheck]


MAX_TASK_INSTANCES = 32
"""Most instances of a task target in a job (every instance is measured after every ascent)."""
MAX_BUDGET = 10.0
"""Largest ‖Δθ‖ a job may ask for: the calibrated budgets are near 1, and far larger steps overflow the losses."""
Text = Annotated[str, Field(min_length=1, max_length=2000, strict=True)]
Budget = Annotated[float, Field(gt=0, le=MAX_BUDGET, allow_inf_nan=False, strict=True)]
Count = Annotated[int, Field(strict=True)]


def non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value


class PromptPair(Strict):
    prompt: Text
    completion: Annotated[str, Field(min_length=1, max_length=500, strict=True)]

    _non_blank = field_validator("prompt", "completion")(non_blank)

    def to_probe(self) -> Probe:
        return Probe(self.prompt, self.completion)


class TargetSpec(PromptPair):
    paraphrases: list[Text] = Field(default_factory=list, max_length=8,
                                    description="Other wordings of the prompt (the completion stays).")
    related: list[PromptPair] = Field(default_factory=list, max_length=8,
                                      description="Prompts of the same relation, other subjects (specificity).")
    unrelated: list[PromptPair] = Field(default_factory=list, max_length=8,
                                        description="Prompts of other relations (default: other demo facts).")
    example_ids: list[Annotated[int, Field(ge=0, strict=True)]] = Field(
        default_factory=list, max_length=100, description="Rows to check as the 'given' selection, e.g. a result list.")
    instances: list[PromptPair] = Field(default_factory=list, max_length=MAX_TASK_INSTANCES - 1,
                                        description="A task target: its further instances (prompt and completion "
                                        "are the first); its loss change is their mean, its selections come from "
                                        "task queries, and related should be the other tasks' instances.")

    @field_validator("paraphrases")
    @classmethod
    def paraphrases_not_blank(cls, value: list[str]) -> list[str]:
        return [non_blank(p) for p in value]

    def to_target(self) -> Target:
        return Target(self.prompt, self.completion, list(self.paraphrases), [p.to_probe() for p in self.related],
                      [p.to_probe() for p in self.unrelated], example_ids=list(self.example_ids),
                      more=[p.to_probe() for p in self.instances])


class AblationRequest(Strict):
    """An ablation job; every field is checked here, and every prompt against the model before the job starts."""

    targets: list[TargetSpec] | None = Field(None, min_length=1, max_length=50,
                                             description="Default: the demo's planted facts (with gold rows).")
    limit: Count = Field(5, ge=1, le=50)
    k: Count = Field(10, ge=1, le=100)
    budgets: list[Budget] = Field([0.5, 1.0, 2.0], min_length=1, max_length=6,
                                  description=f"‖Δθ‖ of each ascent: finite, > 0 and at most {MAX_BUDGET}, distinct.")
    seeds: Count = Field(1, ge=1, le=5)
    random_draws: Count = Field(19, ge=1, le=50)
    methods: list[Selection] = Field(list(DEFAULT_SELECTIONS), min_length=1,
                                     description="Selections to ascend on; 'given' needs example_ids; 'given' and "
                                                 "'unlearning_contrastive' only when asked.")

    @field_validator("budgets")
    @classmethod
    def distinct_budgets(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError("budgets must be distinct")
        return value


class JobStatus(BaseModel):
    id: str
    status: str
    progress: float
    targets: int
    error: str | None = None
    warnings: list[str] = Field([], description="Checks this request cannot run (they will read 'not run'), and "
                                "why; said when the job is accepted.")
    verdicts: dict[str, AblationVerdict] = Field({}, description="When done: per tested selection (gradient, "
                                                 "gradient_contrastive, unlearning, given), the one verdict from the "
                                                 "full checklist, each check's status and reason.")
    report: dict | None = None
    plots: list[str] = []

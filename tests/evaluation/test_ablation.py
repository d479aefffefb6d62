"""Unlearning ablations on the tiny demo: exact restoration, report schema, oracle beats random."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from attribution.ascent import EmptySelectionError, Probe, apply_step, ascent_direction, restored
from attribution.config import AttributionConfig, CurvatureConfig
from attribution.errors import ConfigError
from attribution.session import AttributionSession
from attribution.sketch import SketchConfig
from attribution.tasks import Instance
from evaluation.ablation import Ablator, probe_groups, run_ablation
from evaluation.ablation_plan import (
    AblationSettings,
    NothingToAblateError,
    check_runnable,
    known_empty,
    positions_by_id,
    ranked_selections,
)
from evaluation.ablation_report import markdown, write_report
from evaluation.ablation_stats import random_pvalues
from evaluation.ablation_verdict import evidence, judge
from evaluation.demo_session import demo_session
from evaluation.selections import Selection
from evaluation.targets import Target, check_targets
from indexer.groundtruth import load_facts
from indexer.megatron import MegatronDataset


@pytest.fixture(scope="module")
def session(tiny_demo: Path) -> AttributionSession:
    return demo_session(tiny_demo, AttributionConfig(sketch=SketchConfig(k=4), curvature=CurvatureConfig(sample=64)))


@pytest.fixture(scope="module")
def general(tiny_demo: Path) -> list[list[int]]:
    data = MegatronDataset(tiny_demo / "data" / "document")
    return [data[i].astype("int64").tolist() for i in range(0, len(data), 24)]


def test_weights_are_bit_identical_after_a_trial(session: AttributionSession, general) -> None:
    model = session.encoder.checkpoints[-1].model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    direction = ascent_direction(model, general[:3])
    assert float(direction.norm()) == pytest.approx(1.0)
    with restored(model):
        apply_step(model, direction, 2.0)
        moved = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
        assert float(moved.norm()) == pytest.approx(2.0, rel=1e-4)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_bad_ablation_input(session: AttributionSession, tiny_demo: Path) -> None:
    model = session.encoder.checkpoints[-1].model
    with pytest.raises(EmptySelectionError):
        ascent_direction(model, [])
    with pytest.raises(ConfigError, match="budgets must be positive"):
        apply_step(model, torch.zeros(1), 0.0)
    with pytest.raises(ConfigError):
        AblationSettings(budgets=(-1.0,))
    with pytest.raises(ConfigError, match="unknown ablation methods"):
        AblationSettings(methods=("psychic",))
    with pytest.raises(ConfigError, match="larger than the index"):
        run_ablation(session, [Target.from_fact(load_facts(tiny_demo)[0])], AblationSettings(k=10**6), [[1, 2, 3]])
    with pytest.raises(ConfigError, match="no ablation targets"):
        run_ablation(session, [], AblationSettings(), [[1, 2, 3]])
    fact = Target.from_fact(load_facts(tiny_demo)[0])
    bad_targets = {"needs string 'prompt'": {"prompt": fact.prompt},
                   "at least one token": {"prompt": fact.prompt, "completion": ""},
                   "takes at most": {"prompt": fact.prompt * 40, "completion": fact.completion},
                   "not in the index": {**asdict(fact), "example_ids": [10**9]}}
    for message, target in bad_targets.items():
        with pytest.raises(ConfigError, match=message):
            run_ablation(session, [Target.from_dict(target)], AblationSettings(k=2, random_draws=1, seeds=1),
                         [[1, 2, 3]])
    with pytest.raises(ConfigError, match="no unrelated prompts"):
        run_ablation(session, [fact], AblationSettings(k=2, random_draws=1, seeds=1, methods=("random",)), [[1, 2]])


def test_reduced_report(session: AttributionSession, general, tiny_demo: Path, tmp_path: Path) -> None:
    targets = [Target.from_fact(f) for f in load_facts(tiny_demo) if len(f.gold_rows) >= 2][:4]
    settings = AblationSettings(k=4, budgets=(2.0,), random_draws=4, seeds=1,
                                methods=("gradient", "gradient_contrastive", "bm25", "unlearning", "oracle", "random",
                                         "bottom"))
    report = run_ablation(session, targets, settings, general)
    assert report["schema_version"] == 3 and report["config"]["targets"] == len(targets)
    assert {r["method"] for r in report["rows"]} == set(settings.methods)
    summary = report["summary"]
    assert set(summary) == set(settings.methods)
    assert {"win_rate", "p_value", "p_holm"} <= summary["gradient"]["2.0"]["vs"]["random"].keys()
    oracle = summary["oracle"]["2.0"]["d_target"]["mean"]
    random_mean = summary["random"]["2.0"]["d_target"]["mean"]
    assert oracle > random_mean  # the protocol's own sanity check
    cross = report["cross_target"]["gradient"]["2.0"]
    matrix = np.array(cross["matrix"])
    assert matrix.shape == (len(targets), len(targets)) and np.isfinite(matrix).all()
    assert cross["diagonal_mean"] == pytest.approx(float(np.diag(matrix).mean()))
    # the matrix diagonal is each target's own Δtarget under its gradient selection
    own = {r["target"]: r["d_target"] for r in report["rows"] if r["method"] == "gradient"}
    assert np.allclose(np.diag(matrix), [own[t] for t in range(len(targets))])
    assert report["calibration"]["calibrated_budget"] == 2.0
    assert set(report["evidence"]) == {"gradient", "gradient_contrastive", "unlearning"}
    assert set(report["evidence"]["gradient"]["budgets"]["2.0"]["checks"]) >= {"beats_random", "specificity_z_ge_2"}
    write_report(report, tmp_path)
    assert (tmp_path / "report.json").is_file() and (tmp_path / "dose_response.png").stat().st_size > 1000
    assert (tmp_path / "cross_target.png").stat().st_size > 1000 and "cross_target.png" in report["plots"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| oracle | 2.0 |" in markdown and "## Cross-target matrix" in markdown and "Calibrated budget" in markdown
    assert np.isfinite(summary["gradient"]["2.0"]["excess"]["mean"])


def test_given_selection_checks_exactly_the_rows_asked_for(session: AttributionSession, general,
                                                          tiny_demo: Path) -> None:
    facts = [Target.from_fact(f) for f in load_facts(tiny_demo) if f.gold_rows]
    target = replace(facts[0], example_ids=facts[0].gold_rows[:2])
    settings = AblationSettings(k=2, budgets=(1.0,), random_draws=3, seeds=1, methods=("given", "random"))
    report = run_ablation(session, [target], settings, general, controls=facts)
    given = [r for r in report["rows"] if r["method"] == "given"]
    assert len(given) == 1 and given[0]["example_ids"] == facts[0].gold_rows[:2]
    # one target: no paired test across targets, but a p-value against its own random draws
    (p_value,) = report["summary"]["given"]["1.0"]["random_p_values"]
    assert 1 / 4 <= p_value <= 1
    assert report["cross_target"] == {}  # one target: no matrix


def test_targets_from_json_are_checked_field_by_field(tiny_demo: Path) -> None:
    fact = load_facts(tiny_demo)[0]
    target = Target.from_fact(fact)
    assert Target.from_dict(asdict(target)) == target
    assert Target.from_dict({**fact.to_json(), "gold_rows": fact.gold_rows}) == target  # a planted fact's line
    assert target.related and target.related == fact.related and target.attribute == fact.attribute
    bad = {"must be a JSON object": ["a list"],
           "needs string 'prompt' and 'completion'": {"prompt": "p", "completion": 3},
           "'paraphrases' must be a list of strs": {"prompt": "p", "completion": "c", "paraphrases": "one"},
           "'related' must be a list of": {"prompt": "p", "completion": "c", "related": [{"prompt": "p"}]},
           "'unrelated' must be a list of": {"prompt": "p", "completion": "c", "unrelated": {"prompt": "p"}},
           "'example_ids' must be a list of ints": {"prompt": "p", "completion": "c", "example_ids": ["7"]},
           "'gold_rows' must be a list of ints": {"prompt": "p", "completion": "c", "gold_rows": [True]},
           "'attribute' must be a string": {"prompt": "p", "completion": "c", "attribute": 1}}
    for message, data in bad.items():
        with pytest.raises(ConfigError, match=f"target 3.*{message}"):
            Target.from_dict(data, 3)


NAN = float("nan")


def entry(excess: float = 3.0, z: float = 4.0, ratio: float = 0.2, para_low: float = 0.5, d_target: float = 3.0,
          vs_random: dict | None = None) -> dict:
    """One summary entry as ``summarize`` writes it (NaN where a value could not be computed)."""
    metrics = {"excess": excess, "specificity_z": z, "d_target": d_target}
    out = {name: {"mean": value, "ci95": (value - 1, value + 1)} for name, value in metrics.items()}
    out["related_ratio"] = {"mean": ratio, "ci95": (ratio - 0.1, ratio + 0.1), "targets": 20, "note": "measured"}
    out["paraphrase_excess"] = {"mean": para_low + 1, "ci95": (para_low, para_low + 2)}
    out["vs"] = {} if vs_random is None else {"random": vs_random}
    return out


def summary_with(given: dict, budgets=("1.0", "2.0"), baselines: bool = True) -> dict:
    if baselines:  # the method's excess minus bm25's, over the targets both ran on
        given = {**given, "excess_vs": {"bm25": {"mean_difference": given["excess"]["mean"] - 1.0, "targets": 20}}}
    summary = {"gradient": {b: given for b in budgets}}
    if baselines:
        summary["random"] = {b: entry(excess=0.0, d_target=0.1) for b in budgets}
        summary["bm25"] = {b: entry(excess=1.0) for b in budgets}
        summary["bottom"] = {b: entry(d_target=-0.2) for b in budgets}
    return summary


BEATS = {"win_rate": 1.0, "p_value": 1e-4, "p_holm": 1e-4, "pairs": 20}


def test_evidence_counts_a_check_that_could_not_run_as_not_run_never_passed() -> None:
    passing = evidence(summary_with(entry(vs_random=BEATS)), (1.0, 2.0))["gradient"]
    assert passing["evidence"] and passing["verdict"] == "evidenced" and passing["not_run"] == []
    assert passing["budgets"]["1.0"]["status"] == "passed" and passing["budgets"]["1.0"]["passed"]
    # one target (the issue's repro): no paired test, no interval, no bm25/bottom: nulls everywhere, no pass
    alone = evidence(summary_with(entry(para_low=NAN), baselines=False), (1.0, 2.0))["gradient"]
    checks = alone["budgets"]["1.0"]["checks"]
    assert checks["beats_random"] is None and checks["carries_to_paraphrases"] is None
    assert checks["bottom_no_worse_than_random"] is None and checks["specificity_z_ge_2"] is True
    assert {k: v for k, v in alone["budgets"]["1.0"].items() if k != "reasons"} == {
        "checks": checks, "status": "incomplete", "passed": False, "failed": [],
        "not_run": [n for n, v in checks.items() if v is None]}
    assert alone["budgets"]["1.0"]["reasons"]["beats_random"] == "needs random draws"
    assert not alone["evidence"] and alone["passing_budgets"] == [] and alone["verdict"] == "incomplete"
    assert set(alone["not_run_needs"]) == set(alone["not_run"]) >= {"beats_random", "carries_to_paraphrases"}
    # a NaN p-value is not run too, and one failed check fails the budget whatever did not run
    nan_test = evidence(summary_with(entry(vs_random={**BEATS, "p_holm": NAN})), (1.0,))["gradient"]
    assert nan_test["budgets"]["1.0"]["checks"]["beats_random"] is None and not nan_test["evidence"]
    failed = evidence(summary_with(entry(ratio=0.9, para_low=NAN), baselines=False), (1.0, 2.0))["gradient"]
    assert failed["budgets"]["1.0"]["status"] == "failed" and failed["budgets"]["1.0"]["failed"] == [
        "related_ratio_le_0_5"]
    assert failed["verdict"] == "not evidenced"
    # one budget passing everything is not enough, but nothing failed either: incomplete, needs ≥ 2 budgets
    one = evidence(summary_with(entry(vs_random=BEATS), budgets=("1.0",)), (1.0,))["gradient"]
    assert one["verdict"] == "incomplete" and not one["evidence"]
    assert all("needs ≥ 2 budgets" in why for why in one["not_run_needs"].values())


def test_the_markdown_says_not_run_where_a_check_could_not_run() -> None:
    summary = summary_with(entry(para_low=NAN), baselines=False)
    report = {"schema_version": 3, "config": {"targets": 1, "examples": 10, "k": 5, "budgets": [1.0, 2.0], "seeds": 1,
                                              "random_draws": 19},
              "summary": {m: {b: {**e, "d_paraphrases": e["excess"], "d_related": e["excess"],
                                  "d_unrelated": e["excess"], "d_general": e["excess"]} for b, e in by.items()}
                          for m, by in summary.items()},
              "calibration": {}, "evidence": evidence(summary, (1.0, 2.0)), "cross_target": {},
              "verdicts": {m: v.to_json() for m, v in judge(summary, (1.0, 2.0)).items()}}
    text = markdown(report)
    row = next(line for line in text.splitlines() if line.startswith("| gradient | 1.0 | not run"))
    assert row.count("not run") == 4 and row.endswith("| incomplete |") and "FAIL" not in row
    assert "- **gradient: inconclusive** — not run: beats random, carries to paraphrases" in text
    assert "  - beats random: not run — needs random draws" in text and "What this does and does not show" in text


def test_random_p_values_of_an_unmeasurable_excess_are_not_run() -> None:
    rows = [{"method": "given", "budget": 1.0, "target": 0, "excess": NAN}] + [
        {"method": "random", "budget": 1.0, "target": 0, "excess": 0.1 * i} for i in range(19)]
    assert np.isnan(random_pvalues(rows, "given", 1.0)[0])  # not 1/20, the smallest p there is
    rows[0]["excess"] = 5.0
    assert random_pvalues(rows, "given", 1.0) == [pytest.approx(1 / 20)]


def test_every_prompt_of_a_target_is_checked_before_a_job(session: AttributionSession, tiny_demo: Path) -> None:
    fact = Target.from_fact(load_facts(tiny_demo)[0])
    long = "word " * 200
    check_targets(session, [fact])
    bad = {"target 1, paraphrase 2 is": replace(fact, paraphrases=[fact.prompt, long]),
           "target 1, related prompt 1 .* the completion must each give at least one token":
               replace(fact, related=[Probe(fact.prompt, "")]),
           "target 1, unrelated prompt 1 is .* tokens; the model takes at most":
               replace(fact, unrelated=[Probe(long, " x")])}
    for message, target in bad.items():
        with pytest.raises(ConfigError, match=message):
            check_targets(session, [target])


NONSENSE = Target("qzxv wkjh", " plmn")
"""Issue 24's target: no indexed row shares a word with it, so bm25 selects nothing."""


def test_an_empty_selection_is_not_run_while_the_other_targets_complete(session: AttributionSession, general,
                                                                        tiny_demo: Path) -> None:
    facts = [Target.from_fact(f) for f in load_facts(tiny_demo) if f.gold_rows]
    settings = AblationSettings(k=3, budgets=(1.0,), random_draws=2, seeds=1, methods=("bm25", "gradient", "random"))
    report = run_ablation(session, [NONSENSE, facts[0]], settings, general, controls=facts)
    nonsense, fact = report["targets"]
    assert nonsense["status"] == "partly run" and list(nonsense["not_run"]) == ["bm25"]
    assert "bm25 found no indexed row sharing a word" in nonsense["not_run"]["bm25"]
    assert fact["status"] == "run" and fact["not_run"] == {}
    assert report["not_run"] == [{"target": 0, "prompt": NONSENSE.prompt, "method": "bm25",
                                  "reason": nonsense["not_run"]["bm25"]}]
    ran = {(r["target"], r["method"]) for r in report["rows"]}
    assert ran == {(0, "gradient"), (0, "random"), (1, "bm25"), (1, "gradient"), (1, "random")}
    assert report["summary"]["bm25"]["1.0"]["targets"] == 1
    assert "bm25" not in report["cross_target"] and "gradient" in report["cross_target"]  # no hole in a matrix
    text = markdown(report)
    assert "## Selections not run" in text and f"| bm25 | {nonsense['not_run']['bm25']} | 1 |" in text
    # only that selection asked for: the target is not run at all, the other one completes
    alone = run_ablation(session, [NONSENSE, facts[0]], replace(settings, methods=("bm25",)), general, controls=facts)
    assert [t["status"] for t in alone["targets"]] == ["not run", "run"]


def test_nothing_to_ablate_says_why_up_front_and_in_the_job(session: AttributionSession, general,
                                                            tiny_demo: Path) -> None:
    facts = [Target.from_fact(f) for f in load_facts(tiny_demo) if f.gold_rows]
    settings = AblationSettings(k=3, budgets=(1.0,), random_draws=2, seeds=1, methods=("bm25",))
    (empty,) = known_empty(session, [NONSENSE], settings)
    assert (empty.target, empty.method) == (0, "bm25")
    with pytest.raises(NothingToAblateError, match="every selection of every target is empty .*target 1, bm25: bm25 "
                                                   "found no indexed row"):
        check_runnable([empty], [NONSENSE], settings)
    check_runnable([empty], [NONSENSE], replace(settings, methods=("bm25", "random")))  # random always has rows
    with pytest.raises(NothingToAblateError, match="ask for another method"):
        run_ablation(session, [NONSENSE], settings, general, controls=facts)


def test_a_zero_gradient_is_not_run_with_its_reason(session: AttributionSession, general, tiny_demo: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    facts = [Target.from_fact(f) for f in load_facts(tiny_demo) if f.gold_rows]
    trials = Ablator.trials

    def flat_for_gradient(self, method, *args):
        if method == "gradient":
            raise EmptySelectionError("the selection's gradient is zero: nothing to ascend on")
        return trials(self, method, *args)

    monkeypatch.setattr(Ablator, "trials", flat_for_gradient)
    settings = AblationSettings(k=2, budgets=(1.0,), random_draws=2, seeds=2, methods=("gradient", "random"))
    report = run_ablation(session, facts[:2], settings, general)
    assert [t["not_run"] for t in report["targets"]] == [{"gradient": "the selection's gradient is zero: nothing to "
                                                                      "ascend on"}] * 2
    assert len(report["not_run"]) == 2 and {r["method"] for r in report["rows"]} == {"random"}
    assert report["verdicts"] == {} and report["evidence"] == {}


def test_a_task_target_measures_every_instance_and_selects_by_task_queries(session: AttributionSession, general,
                                                                          tiny_demo: Path) -> None:
    facts = [f for f in load_facts(tiny_demo) if f.gold_rows]
    same = [f for f in facts if f.attribute == facts[0].attribute][:3]
    others = [f for f in facts if f.attribute != facts[0].attribute][:3]
    task = Target(same[0].prompt, same[0].completion, related=[Probe(f.prompt, f.completion) for f in others],
                  unrelated=[Probe(f.prompt, f.completion) for f in facts
                             if f.attribute not in (same[0].attribute, others[0].attribute)][:3],
                  gold_rows=sorted({g for f in same for g in f.gold_rows}),
                  more=[Probe(f.prompt, f.completion) for f in same[1:]])
    line = asdict(task)
    line["instances"] = line.pop("more")  # a JSON line names them 'instances'
    assert Target.from_dict(line) == task and len(task.instances) == len(same)
    probes, slices = probe_groups(task, [], [task])
    assert probes[slices["target"]] == task.instances  # the target's change is the mean over every instance
    settings = AblationSettings(k=5, budgets=(2.0,), random_draws=2, seeds=1, methods=("gradient", "bm25", "random"))
    chosen = ranked_selections(session, task, settings, positions_by_id(session))
    by_task = session.attribute_task([Instance(f.prompt, f.completion) for f in same], k=5, method="gradient")
    assert [int(session.ids[p]) for p in chosen[Selection.GRADIENT]] == [r.example_id for r in by_task]
    report = run_ablation(session, [task], settings, general)
    rows = [r for r in report["rows"] if r["method"] == "gradient"]
    assert rows and np.isfinite(rows[0]["d_target"]) and np.isfinite(rows[0]["related_ratio"])
    with pytest.raises(ConfigError, match="target 2.*'instances' must be a list of"):
        Target.from_dict({"prompt": "p", "completion": "c", "instances": ["q"]}, 2)


def test_the_contrastive_unlearning_selection_is_the_search_with_related_as_controls(session: AttributionSession,
                                                                                    general, tiny_demo: Path) -> None:
    """``unlearning_contrastive`` = the unlearning retriever's top k with the target's related prompts as controls,
    their direction projected out (a task target: the related as one control task); opt-in; without related prompts
    it is not run, with its reason."""
    facts = [f for f in load_facts(tiny_demo) if f.gold_rows]
    fact = Target.from_fact(facts[0])
    assert fact.related
    settings = AblationSettings(k=5, budgets=(1.0,), random_draws=2, seeds=1,
                                methods=("unlearning", "unlearning_contrastive", "random"))
    chosen = ranked_selections(session, fact, settings, positions_by_id(session))
    contrastive = replace(session.config.unlearning, contrastive=True)
    query = replace(fact.query(), controls=[(p.prompt, p.completion) for p in fact.related], unlearning=contrastive)
    expected = [h.row for h in session.retriever(Selection.UNLEARNING).search(query, 5)]
    assert chosen[Selection.UNLEARNING_CONTRASTIVE] == expected and len(expected) == 5
    lonely = replace(fact, related=[])
    report = run_ablation(session, [fact, lonely], settings, general, controls=[Target.from_fact(f) for f in facts])
    skipped = [s for s in report["not_run"] if s["method"] == "unlearning_contrastive"]
    assert [s["target"] for s in skipped] == [1] and "no related prompts" in skipped[0]["reason"]
    assert any(r["method"] == "unlearning_contrastive" and r["target"] == 0 for r in report["rows"])
    assert Selection.UNLEARNING_CONTRASTIVE not in AblationSettings().methods

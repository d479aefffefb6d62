"""Tail-patch (``headwater eval tailpatch``) on a tiny demo index: exact restoration, gold rows beat random,
the learning rate of training, report schema, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attribution.batching import training_batch
from attribution.errors import ConfigError
from attribution.session import AttributionSession
from evaluation.demo_config import TINY
from evaluation.facts import FactSelection
from evaluation.tailpatch import TailPatcher, TailPatchSettings, final_learning_rate, row_tokens, run_tailpatch
from evaluation.training import learning_rate, settings_for
from headwater.cli import app
from indexer.groundtruth import Fact
from indexer.megatron import MegatronDataset

runner = CliRunner()


@pytest.fixture(scope="module")
def facts(selection: FactSelection) -> list[Fact]:
    return selection.facts


def test_learning_rate_is_the_last_step_of_training(tiny_demo: Path, tmp_path: Path) -> None:
    settings = settings_for(TINY, TINY.vocab_size)
    assert final_learning_rate(tiny_demo / "model") == pytest.approx(learning_rate(TINY.steps - 1, settings))
    assert final_learning_rate(tiny_demo / "model", "step8") == pytest.approx(learning_rate(8, settings))
    assert final_learning_rate(tiny_demo / "model") < TINY.learning_rate  # cosine-decayed, not the peak
    with pytest.raises(ConfigError, match="--lr"):
        final_learning_rate(tmp_path)


def test_rows_are_the_trained_tokens(session: AttributionSession, tiny_demo: Path) -> None:
    data = MegatronDataset(tiny_demo / "data" / "document")
    rows = row_tokens(session, [0, 5])
    assert rows[5] == data[int(session.ids[5])].astype("int64").tolist()


def test_weights_are_bit_identical_after_a_tail_patch(session: AttributionSession, facts: list[Fact]) -> None:
    patcher = TailPatcher(session, facts[:2], TailPatchSettings(lr=0.01))
    model = patcher.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = [p.requires_grad for p in model.parameters()]
    rows = row_tokens(session, [3, 7])
    result = patcher.run(rows, {3: {0, 1}, 7: {1}})
    assert set(result) == {(3, 0), (3, 1), (7, 1)}
    assert all(v != 0.0 for v in result.values())  # the step did move the model
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    again = patcher.run(rows, {3: {0, 1}, 7: {1}})
    assert again == result  # deterministic, and measured from the same restored weights


def test_a_gold_row_raises_its_fact_more_than_random_rows(session: AttributionSession, facts: list[Fact]) -> None:
    settings = TailPatchSettings(lr=final_learning_rate(Path(session.manifest.config.model)), k=4,
                                 methods=("oracle", "random"), random_draws=2)
    report = run_tailpatch(session, facts[:12], settings)
    pairs = [(q["methods"]["oracle"]["increase"], q["methods"]["random"]["increase"]) for q in report["queries"]]
    assert len(pairs) == 12
    assert sum(gold > rand for gold, rand in pairs) >= 11  # measured: 25 of 25 facts on the tiny demo
    oracle = report["summary"]["oracle"]
    assert oracle["mean"] > report["summary"]["random"]["mean"] and oracle["vs"]["random"]["p_value"] < 0.01
    assert oracle["excess_over_random"]["ci95"][0] > 0


def test_report_schema(session: AttributionSession, facts: list[Fact], tmp_path: Path) -> None:
    settings = TailPatchSettings(lr=3e-4, k=2, random_draws=2,
                                 methods=("gradient", "gradient_contrastive", "bm25", "unlearning", "random"))
    report = run_tailpatch(session, facts[:3], settings)
    assert report["schema_version"] == 1 and report["config"]["queries"] == 3 and report["config"]["k"] == 2
    assert set(report["summary"]) == set(settings.methods)
    for query in report["queries"]:
        assert all(len(draw) == 2 for m in query["methods"].values() for draw in m["rows"])
        assert len(query["methods"]["random"]["rows"]) == 2
    gradient = report["summary"]["gradient"]
    assert gradient["ci95"][0] <= gradient["mean"] <= gradient["ci95"][1]
    assert {"win_rate", "p_value", "p_holm"} <= gradient["vs"]["random"].keys() and "gradient" not in gradient["vs"]
    assert report["timing"]["steps"] > 0 and report["timing"]["ms_per_step"] > 0


def test_cli_writes_the_report(index: Path, tiny_demo: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "tailpatch", "--index", str(index), "--all-facts", "--limit", "3", "--k", "2",
                                 "--methods", "gradient,oracle,random", "--random-draws", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| oracle | 3 |" in result.output
    saved = json.loads((tmp_path / "tailpatch.json").read_text())
    assert saved["config"]["lr"] == pytest.approx(final_learning_rate(tiny_demo / "model"))
    assert saved["config"]["max_grad_norm"] == 1.0
    assert (tmp_path / "tailpatch.md").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "0"], "k must be positive"),
        (["--methods", "gradient,psychic"], "unknown or no tail-patch methods"),
        (["--random-draws", "0"], "random_draws must be at least 1"),
        (["--lr", "-1"], "must be positive"),
        (["--demo", "/nonexistent-demo"], "no facts.jsonl"),
        ([], "no usable facts"),  # the tiny model gets no fact whole
    ],
)
def test_cli_bad_input(index: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["eval", "tailpatch", "--index", str(index), "--methods", "bm25,random", "--out",
                                 str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3])
def test_a_step_is_plain_sgd_on_the_mean_token_loss(max_grad_norm: float | None) -> None:
    """The chunked head's step equals autograd on the whole logits (clipped as torch clips), and leaves .grad as
    it found it."""
    from evaluation.tailpatch import sgd_step
    from tests.attribution.conftest import make_tiny_model, random_rows

    model, reference = make_tiny_model(), make_tiny_model()
    row = random_rows([12], seed=3)[0]
    ids = torch.tensor([row])
    logits = reference(input_ids=ids).logits[0, :-1]  # float64 (transformers' own loss would cast to float32)
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])  # mean NLL over the row's 11 targets
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(reference.parameters(), max_grad_norm)
    with torch.no_grad():
        for p in reference.parameters():
            p.sub_(0.1 * p.grad)
    sgd_step(model, training_batch([row]), lr=0.1, max_grad_norm=max_grad_norm)
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)
        assert mine.grad is None

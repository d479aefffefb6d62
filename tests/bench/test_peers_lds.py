"""bench.peers_lds's pure helpers: the bergson recipes' settings and the store arithmetic, without bergson."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench.peers_lds import (
    ASTRA_CG,
    ASTRA_SGD,
    PEERS,
    RECIPES,
    REFINED,
    astra_settings,
    diverged,
    grad_columns,
    store_inner_products,
)


def test_importing_the_peers_does_not_import_bergson() -> None:
    assert "bergson" not in sys.modules


def test_every_recipe_is_a_peer_and_follows_bergsons_leaderboard_settings() -> None:
    assert set(RECIPES) <= set(PEERS)
    cg, astra = RECIPES["bergson-ekfac-cg"], RECIPES["bergson-astra"]
    assert (cg.method, cg.damping, cg.astra["solver"], cg.astra["num_steps"]) == ("kfac", 10.0, "cg", 20)
    assert (astra.method, astra.damping, astra.astra["solver"], astra.astra["lr"]) == ("kfac", 0.1, "sgd", 0.1)
    assert RECIPES["bergson-shampoo"].method == "shampoo" and not RECIPES["bergson-shampoo"].astra
    assert RECIPES["bergson-shampoo-astra"].astra == ASTRA_SGD
    assert REFINED == ("bergson-ekfac-cg", "bergson-astra", "bergson-shampoo-astra")  # left out by default
    assert "kronfluence-ekfac-head" in PEERS and "kronfluence-ekfac-head" not in REFINED  # the head tracked too


def test_the_astra_step_size_overrides_sgd_only() -> None:
    assert astra_settings(RECIPES["bergson-astra"], None) == ASTRA_SGD
    assert astra_settings(RECIPES["bergson-astra"], 0.003) == {**ASTRA_SGD, "lr": 0.003}
    assert ASTRA_SGD["lr"] == 0.1  # the recipe itself is left alone
    assert astra_settings(RECIPES["bergson-ekfac-cg"], 0.003) == ASTRA_CG
    assert astra_settings(RECIPES["bergson-shampoo"], 0.003) == {}


def test_grad_columns_lay_modules_out_in_order() -> None:
    assert grad_columns({"a": 2, "b": 3}) == {"a": slice(0, 2), "b": slice(2, 5)}


def test_inner_products_match_modules_by_name_whatever_their_order() -> None:
    rng = np.random.default_rng(0)
    a_q, b_q = rng.normal(size=(2, 2)), rng.normal(size=(2, 3))
    a_r, b_r = rng.normal(size=(4, 2)), rng.normal(size=(4, 3))
    queries = np.concatenate([a_q, b_q], axis=1)  # a then b
    rows = np.concatenate([b_r, a_r], axis=1).astype(np.float32)  # b then a
    scores = store_inner_products(queries, {"a": 2, "b": 3}, rows, {"b": 3, "a": 2})
    assert scores.shape == (2, 4) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, a_q @ a_r.T + b_q @ b_r.T, rtol=1e-5)


def test_inner_products_refuse_stores_over_other_modules() -> None:
    with pytest.raises(SystemExit, match="different modules"):
        store_inner_products(np.zeros((1, 2)), {"a": 2}, np.zeros((1, 2)), {"b": 2})
    with pytest.raises(SystemExit, match="different modules"):
        store_inner_products(np.zeros((1, 2)), {"a": 2}, np.zeros((1, 3)), {"a": 3})


def test_divergence_is_a_blown_up_or_non_finite_objective() -> None:
    assert not diverged(7e4, -9e3)
    assert not diverged(-9e3, -8.9e3)  # a small rise is noise on another batch, not divergence
    assert diverged(9e4, 5e5)
    assert diverged(-9e3, 1e4)
    assert diverged(9e4, float("nan"))
    assert diverged(9e4, float("inf"))

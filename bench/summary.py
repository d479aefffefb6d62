"""The attribution-vs-influence table of ``bench/RESULTS.md``, from the JSON the evaluations wrote.

*Attribution* asks where a fact is stated (fact tracing against planted facts); *influence* asks what
changes the output (LDS, tail-patch, the unlearning ablation). A method may lead on one and trail on
the other, so each gets its own columns, and the leader of every column is named underneath.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ROWS = ("gradient", "gradient_contrastive", "unlearning", "bm25", "embedding", "hybrid", "oracle", "random", "bottom")
NAMES = {"gradient_contrastive": "gradient + contrastive", "oracle": "oracle (gold rows)",
         "random": "random rows", "bottom": "bottom (lowest gradient scores)"}
FACT_NAMES = {"gradient_contrastive": "gradient+contrastive"}
LDS_NAMES = {"random": "shuffled"}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fact_columns(facts: dict | None) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for row in (facts or {}).get("rows", []):
        method = next((m for m, name in FACT_NAMES.items() if name == row["method"]), row["method"])
        key = "train" if row["prompts"] == "train" else "heldout"
        out.setdefault(method, {})[f"r10_{key}"] = row["recall@10"]
        out[method][f"mrr_{key}"] = row["mrr"]
    return out


def lds_column(lds: dict | None, key: str = "methods") -> dict[str, float]:
    """Mean LDS per method: every row's score (``methods``) or only the top-k rows' (``methods_top_k``)."""
    methods = (lds or {}).get(key, {})
    out = {}
    for name, entry in methods.items():
        method = next((m for m, alias in LDS_NAMES.items() if alias == name), name)
        out[method] = entry.get("mean") if isinstance(entry, dict) else entry
    return out


def tailpatch_column(tail: dict | None) -> dict[str, float]:
    return {m: e["mean"] for m, e in (tail or {}).get("summary", {}).items()}


def ablation_columns(report: dict | None) -> tuple[dict[str, dict[str, float]], str | None]:
    if not report:
        return {}, None
    budget = str(report["calibration"]["calibrated_budget"])
    out = {m: {"excess": e[budget]["excess"]["mean"], "related_ratio": e[budget]["related_ratio"]["mean"]}
           for m, e in report["summary"].items() if budget in e}
    return out, budget


def attribution_vs_influence(out: Path) -> str:
    facts = fact_columns(_load(out / "facts" / "facts.json"))
    lds_report = _load(out / "lds" / "lds.json")
    lds, lds_top = lds_column(lds_report), lds_column(lds_report, "methods_top_k")
    top_k = (lds_report or {}).get("config", {}).get("top_k")
    tail = tailpatch_column(_load(out / "tailpatch" / "tailpatch.json"))
    ablation, budget = ablation_columns(_load(out / "ablation" / "report.json"))
    columns = [("fact R@10 train", lambda m: facts.get(m, {}).get("r10_train"), True),
               ("fact MRR train", lambda m: facts.get(m, {}).get("mrr_train"), True),
               ("fact R@10 held-out", lambda m: facts.get(m, {}).get("r10_heldout"), True),
               ("LDS", lambda m: lds.get(m), True),
               *([(f"LDS top {top_k}", lambda m: lds_top.get(m), True)] if lds_top else []),
               ("tail-patch Δlog p (×1e-4)", lambda m: None if tail.get(m) is None else tail[m] * 1e4, True),
               (f"ablation excess (budget {budget})", lambda m: ablation.get(m, {}).get("excess"), True),
               ("ablation related ratio", lambda m: ablation.get(m, {}).get("related_ratio"), False)]
    lines = ["## Attribution vs influence", "",
             "Attribution = fact tracing (is the row that states the fact retrieved?); influence = LDS, tail-patch "
             "and the unlearning ablation (does the row change the output?). Higher is better except the related "
             "ratio (lower = more specific). — = not applicable or not run. Oracle = the gold rows themselves.", "",
             "| method | " + " | ".join(c[0] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for method in ROWS:
        values = [_num(get(method)) for _, get, _ in columns]
        if all(v is None for v in values):
            continue
        lines.append(f"| {NAMES.get(method, method)} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in values)
                     + " |")
    for name, values in (("LDS", lds), (f"top-{top_k} LDS", lds_top)):
        control = _num(values.get("random"))
        if control is None:
            continue
        beaten = [NAMES.get(m, m) for m in ROWS if m != "random" and (v := _num(values.get(m))) is not None
                  and v <= control]
        if beaten:
            lines += ["", f"**{name} caveat**: the shuffled-score control scores {control:.3f}, as high as or higher "
                      f"than {', '.join(beaten)}: on this measure those are indistinguishable from noise (see the "
                      "permutation p-values in the LDS section)."]
    lines += ["", "Leaders (among retrieval methods, not the oracle):", ""]
    contenders = [m for m in ROWS if m not in ("oracle", "random", "bottom")]
    for title, get, higher in columns:
        scored = [(v, m) for m in contenders if (v := _num(get(m))) is not None]
        if not scored:
            continue
        best = max(scored) if higher else min(scored)
        ours = "" if best[1] == "gradient" else \
            f"; gradient {next((f'{v:.3f}' for v, m in scored if m == 'gradient'), '—')}"
        lines.append(f"- {title}: **{NAMES.get(best[1], best[1])}** ({best[0]:.3f}){ours}")
    return "\n".join(lines) + "\n"

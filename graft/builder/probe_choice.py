"""From scored, measured candidates to a choice: the Pareto front, the budget, the recommendation
and the verdict on transfer. Plain data in, plain data out (the rows of probe.json)."""

from __future__ import annotations

import numpy as np

from graft.builder.probe_scores import paired_ci
from graft.errors import DataError

TOLERANCE = 0.01  # estimates this close to the best count as equal; the fastest of them is chosen


def options_of(candidates: list[dict]) -> list[dict]:
    """One row per candidate and measured precision: what a user could ship. An int8 row whose
    agreement with float32 breaks export's int8 budget carries ``refused`` (why)."""
    rows = []
    for cand in candidates:
        for precision, cost in cand["cost"].items():
            row = {"id": f"{cand['id']} {precision}", "candidate": cand["id"],
                   "precision": precision, "estimate": cand["estimate"],
                   "interval": cand["logistic"]["interval"], **cost}
            reason = refusal(cand) if precision == "int8" else None
            rows.append({**row, "refused": reason} if reason else row)
    return rows


def refusal(cand: dict) -> str | None:
    """Why a candidate's int8 file may not be shipped (None: it may): its measured agreement."""
    check = cand.get("int8_agreement")
    if not check or not check["breaches"]:
        return None
    return (f"int8 refused: {'; '.join(check['breaches'])} against float32 on {check['images']} probe "
            "images; graft export would fail its int8 check")


def pareto(options: list[dict]) -> list[dict]:
    """Mark each option on the accuracy/latency front (no other is as fast and more accurate, or
    faster and as accurate; refused options are on no front); the front first, fastest first,
    then the rest by estimate."""
    shippable = [o for o in options if not o.get("refused")]
    for row in options:
        row["pareto"] = not row.get("refused") and not any(
            o is not row and o["latency_ms"] <= row["latency_ms"] and o["estimate"] >= row["estimate"]
            and (o["latency_ms"] < row["latency_ms"] or o["estimate"] > row["estimate"])
            for o in shippable)
    front = sorted((o for o in options if o["pareto"]), key=lambda o: o["latency_ms"])
    rest = sorted((o for o in options if not o["pareto"]), key=lambda o: (-o["estimate"], o["latency_ms"]))
    return front + rest


def within(row: dict, latency_ms: float | None, size_mb: float | None) -> bool:
    return ((latency_ms is None or row["latency_ms"] <= latency_ms)
            and (size_mb is None or row["size_mb"] <= size_mb))


def budget_text(latency_ms: float | None, size_mb: float | None) -> str:
    parts = ([f"latency <= {latency_ms:g} ms"] if latency_ms is not None else []) + \
            ([f"size <= {size_mb:g} MB"] if size_mb is not None else [])
    return " and ".join(parts) or "no budget"


def recommend(options: list[dict], candidates: dict[str, dict], latency_ms: float | None,
              size_mb: float | None, tolerance: float = TOLERANCE) -> dict:
    """The option to build: among those within the budget and not refused, the estimates within
    ``tolerance`` of the best; of those, float32 before int8 (no quantization loss), then the fastest.

    Raises:
        DataError: no option meets the budget (names the fastest and its cost).
    """
    fitting = [o for o in options if within(o, latency_ms, size_mb) and not o.get("refused")]
    if not fitting:
        refused = [o["id"] for o in options if o.get("refused") and within(o, latency_ms, size_mb)]
        if refused:
            raise DataError(f"no candidate meets the budget ({budget_text(latency_ms, size_mb)}) with an "
                            f"export that would pass its check: {', '.join(refused)} fit(s) it, but its "
                            "int8 agreement with float32 breaks export's int8 budget; raise the budget")
        fastest = min(options, key=lambda o: o["latency_ms"])
        smallest = min(options, key=lambda o: o["size_mb"])
        raise DataError(f"no candidate meets the budget ({budget_text(latency_ms, size_mb)}): the "
                        f"fastest is {fastest['id']} at {fastest['latency_ms']:.2f} ms "
                        f"({fastest['size_mb']:.2f} MB), the smallest {smallest['id']} at "
                        f"{smallest['size_mb']:.2f} MB; raise the budget or add smaller candidates")
    best = max(o["estimate"] for o in fitting)
    near = [o for o in fitting if o["estimate"] >= best - tolerance]
    pick = min(near, key=lambda o: (o["precision"] != "float32", o["latency_ms"], -o["estimate"]))
    cand = candidates[pick["candidate"]]
    why = (f"estimated {pick['estimate']:.1%} {_interval(pick['interval'])} by a {cand['logistic']['folds']}-fold "
           f"logistic probe on {cand['logistic']['n']} images; the best estimate within "
           f"{budget_text(latency_ms, size_mb)} is {best:.1%}, and of the {len(near)} option(s) within "
           f"{tolerance:.0%} of it this is the {'fastest float32' if pick['precision'] == 'float32' else 'fastest (int8: no float32 option fits)'} "
           f"at {pick['latency_ms']:.2f} ms, {pick['size_mb']:.2f} MB")
    return {"candidate": pick["candidate"], "backbone": cand["backbone"], "image_size": cand["image_size"],
            "cut_layer": cand["cut_layer"], "precision": pick["precision"], "estimate": pick["estimate"],
            "interval": pick["interval"], "latency_ms": pick["latency_ms"], "size_mb": pick["size_mb"],
            "why": why}


def verdict(best: dict, best_correct: np.ndarray, baseline: dict, baseline_correct: np.ndarray) -> dict:
    """Does transfer help: the best candidate against the no-transfer baseline, image by image."""
    diff, interval = paired_ci(best_correct, baseline_correct)
    helps = bool(diff > 0 and interval[0] > 0)
    n = int(len(best_correct))
    if helps:
        text = (f"transfer helps: {best['id']} beats the baseline ({baseline['description']}) by "
                f"{diff:+.1%} {_interval(interval)}, n={n}")
    else:
        text = (f"transfer does not clearly help here: {best['id']} differs from the baseline "
                f"({baseline['description']}) by {diff:+.1%} {_interval(interval)}, n={n}; "
                "the interval includes zero or lies below it")
    if n < 100:
        text += " (a small sample: the interval is wide)"
    return {"transfer_helps": helps, "best": best["id"], "difference": diff, "interval": interval,
            "n": n, "text": text}


def _interval(interval: list[float]) -> str:
    return f"[95% CI {interval[0]:.1%}, {interval[1]:.1%}]"


def ranked(candidates: list[dict]) -> list[dict]:
    """Candidates by estimate, LogME breaking ties (higher first)."""
    return sorted(candidates, key=lambda c: (-c["estimate"], -c["logme"]))

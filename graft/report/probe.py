"""The report's "Choice of backbone" section: what `graft build --backbone auto` measured and chose."""

from __future__ import annotations

from graft.report.html import esc, facts_table, note, table


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def probe_section(probe: dict) -> str:
    """The choice, why, the verdict on transfer, and the candidates along the Pareto front."""
    rec, verdict = probe.get("recommendation") or {}, probe.get("verdict") or {}
    cands = {c["id"]: c for c in probe.get("candidates", [])}
    pinned = ", ".join(probe.get("pinned") or []) or "nothing"
    budget = probe.get("budget") or {}
    pairs = [("Chosen", esc(f"{rec.get('candidate', '?')} {rec.get('precision', '')}")),
             ("Why", esc(rec.get("why", "not recorded"))),
             ("Transfer", esc(verdict.get("text", "not recorded"))),
             ("Budget", esc(", ".join(f"{k} {v}" for k, v in budget.items() if v is not None) or "none")),
             ("Pinned", esc(pinned)),
             ("Images scored", esc(f"{probe.get('images', '?')} (training and validation splits; "
                                   "the test split is never scored)"))]
    if probe.get("export"):
        e = probe["export"]
        pairs.append(("Export for the budget", esc(
            f"{e['path']}: {e['latency_ms']:.2f} ms, {e['size_mb']:.2f} MB measured; "
            f"{'meets' if e['meets_budget'] else 'does not meet'} the budget")))
    rows = []
    for row in probe.get("options", []):
        cand = cands.get(row["candidate"], {})
        low, high = row["interval"]
        rows.append([("* " if row.get("pareto") else "") + row["candidate"], row["precision"],
                     f"{_pct(row['estimate'])} [{_pct(low)}, {_pct(high)}]",
                     _pct((cand.get("knn") or {}).get("accuracy")), cand.get("logme", "-"),
                     f"{row['latency_ms']:.2f}", f"{row['size_mb']:.2f}"])
    base = probe.get("baseline") or {}
    rows.append(["baseline: " + base.get("description", "raw pixels"), "-",
                 _pct(base.get("estimate")), _pct((base.get("knn") or {}).get("accuracy")), "-", "-", "-"])
    return (facts_table(pairs)
            + table(["candidate", "precision", "logistic probe (95% CI)", "k-NN", "LogME",
                     "latency ms", "size MB"], rows, numeric={2, 3, 4, 5, 6}, css_id="probe-table")
            + note("* on the accuracy/latency Pareto front. Estimates are out-of-fold accuracy of a "
                   "logistic probe on frozen features; latency is batch 1 through graft's runtime on the "
                   "machine that built the model."))

"""Budgets: how far an export may stray from the Keras model, per precision family, and the rule
that judges a measurement against one.

The rule (the default) reads the interval, not the point: a budget breaks only
when the 95% interval lies wholly on the wrong side of it, that is when the
upper bound of agreement is below ``min_agreement``, or the lower bound of the
accuracy drop is above ``max_accuracy_drop``. One flipped image among 20 then
says "cannot tell", not "broken". ``strict`` keeps the point rule: the
measured figure itself must meet the budget. ``max_abs_diff`` is a maximum over
every image checked, so it is compared as it is under both rules.
"""

from __future__ import annotations

from graft.stats import interval_text

# Fractions (0.98 = 98%); max_accuracy_drop is in accuracy fraction (0.01 = 1 point).
BUDGETS = {
    "float32": {"min_agreement": 1.0, "max_abs_diff": 1e-4},
    "float16": {"min_agreement": 0.995},
    "int8": {"min_agreement": 0.98, "max_accuracy_drop": 0.01},
}
RULES = ("interval", "strict")


def budget_for(family: str, overrides: dict | None = None) -> dict:
    """The budget of a precision family ('float32', 'float16', 'int8') with overrides applied."""
    budget = dict(BUDGETS[family])
    budget.update((overrides or {}).get(family, {}))
    return budget


def is_default_budget(family: str, budget: dict) -> bool:
    """Whether ``budget`` is the default one of its family (a looser one must be reported)."""
    return budget == BUDGETS[family]


def breaches(result: dict, budget: dict, strict: bool = False) -> list[str]:
    """What a result breaks in a budget, as short phrases (empty: within budget)."""
    found = []
    agreement, (low, high) = result["top1_agreement"], result.get("agreement_interval") or (None, None)
    bound = agreement if strict or high is None else high
    if bound < budget.get("min_agreement", 0.0):
        found.append(f"agreement {agreement:.2%} (n={result.get('images')}"
                     + ("" if low is None else f", {interval_text(low, high)}")
                     + f") < {budget['min_agreement']:.2%}")
    if not result["max_abs_diff"] <= budget.get("max_abs_diff", float("inf")):  # NaN breaks it too
        found.append(f"max |dprob| {result['max_abs_diff']:.2e} > {budget['max_abs_diff']:.0e}")
    drop = result.get("accuracy_drop")
    if drop is not None and "max_accuracy_drop" in budget:
        low, high = result.get("drop_interval") or (None, None)
        bound = drop if strict or low is None else low
        if not bound <= budget["max_accuracy_drop"]:
            found.append(f"accuracy drop {drop * 100:.2f} pt (n={result.get('test_images')}"
                         + ("" if low is None else f", {interval_text(low, high, unit=' pt', digits=2)}")
                         + f") > {budget['max_accuracy_drop'] * 100:.2f} pt")
    return found


def judge(result: dict, family: str, budgets: dict | None, strict: bool = False) -> dict:
    """Judge a parity result: ``passed`` under the budget given, ``status`` under it and the default.

    Returns the fields a graft.json row keeps: status ('ok' or 'flagged'), flagged
    (why), rule ('interval' or 'strict'), budget (the one given), budget_default
    (whether it is the default) and default_breaches (what the default budget finds).
    """
    budget = budget_for(family, budgets)
    given = breaches(result, budget, strict)
    default = breaches(result, budget_for(family), strict)
    verdict = {"budget": budget, "budget_default": is_default_budget(family, budget),
               "rule": "strict" if strict else "interval",
               "passed": not given, "breaches": given, "default_breaches": default}
    found = list(dict.fromkeys(given + default))
    verdict["status"] = "flagged" if found else "ok"
    if found:
        verdict["flagged"] = "breaks its budget: " + ", ".join(found)
        if not given:
            verdict["flagged"] = "breaks the default budget (" + ", ".join(default) + \
                                 "); passes only the looser budget it was verified with"
    return verdict

"""Intervals for the figures graft judges by (standard library and numpy only).

- ``wilson``: the Wilson score interval of a proportion (agreement, accuracy).
  Unlike the normal approximation it stays inside [0, 1] and is not empty at
  0 or n successes, so 20 of 20 reads "83.9% to 100%", not "100%".
- ``paired_difference``: Newcombe's (1998) hybrid score interval, method 10,
  for the difference of two proportions measured on the same items (the
  accuracy drop from the Keras model to an export on the same test images).
  It uses the two Wilson intervals and the correlation of the pairs, so it
  stays honest when the two models disagree on no image at all.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95%
SMALL_N = 30             # below this many images an accuracy figure is said to be too few to judge


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n``; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n successes the bound is exact in theory; clamp rounding noise.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def paired_difference(both: int, first_only: int, second_only: int, neither: int,
                      z: float = Z95) -> tuple[float, float, float]:
    """Difference p1 - p2 of two paired proportions, with Newcombe's method-10 interval.

    Args:
        both: items both are right on.
        first_only: items only the first is right on.
        second_only: items only the second is right on.
        neither: items neither is right on.

    Returns:
        (difference, low, high).
    """
    n = both + first_only + second_only + neither
    if n == 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson(both + first_only, n, z)
    l2, u2 = wilson(both + second_only, n, z)
    phi = _phi(both, first_only, second_only, neither)
    difference = p1 - p2
    d_low = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    d_high = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    low = max(-1.0, difference - math.sqrt(max(d_low, 0.0)))
    high = min(1.0, difference + math.sqrt(max(d_high, 0.0)))
    return difference, low, high


def _phi(a: int, b: int, c: int, d: int) -> float:
    """The phi correlation of the paired table with Newcombe's continuity correction
    (ad - bc less n/2 when positive, never below 0 there); 0 when a margin is empty."""
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if not margins:
        return 0.0
    cross = a * d - b * c
    n = a + b + c + d
    corrected = max(cross - n / 2, 0.0) if cross > 0 else cross
    return corrected / math.sqrt(margins)


def interval_text(low: float, high: float, scale: float = 100.0, unit: str = "%", digits: int = 1) -> str:
    """'95% CI 83.9–100.0%', or '95% CI -8.57 to +8.57 pt' when a bound is negative."""
    if low < 0:
        return f"95% CI {low * scale:+.{digits}f} to {high * scale:+.{digits}f}{unit}"
    return f"95% CI {low * scale:.{digits}f}–{high * scale:.{digits}f}{unit}"


def agreement_text(result: dict) -> str:
    """'99.23% (n=130, 95% CI 95.8–99.9%)' from a parity result."""
    low, high = result.get("agreement_interval") or (None, None)
    text = f"{result['top1_agreement']:.2%} (n={result.get('images', '?')}"
    return text + ("" if low is None else f", {interval_text(low, high)}") + ")"


def accuracy_text(result: dict) -> str:
    """The export's held-out accuracy and its drop from Keras with n and intervals, or, on too few
    held-out images, words saying so instead of a figure that means nothing."""
    n = result.get("test_images")
    if n is None:  # a result recorded before intervals were kept
        return f"{result['accuracy']:.2%} (keras {result['keras_accuracy']:.2%})"
    if n < SMALL_N:
        return f"not judged (n={n} held-out images, too few: {SMALL_N} needed)"
    low, high = result["accuracy_interval"]
    d_low, d_high = result["drop_interval"]
    return (f"{result['accuracy']:.2%} (n={n}, {interval_text(low, high)}), drop from Keras "
            f"{result['accuracy_drop'] * 100:+.2f} pt ({interval_text(d_low, d_high, unit=' pt', digits=2)})")

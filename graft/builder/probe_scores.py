"""Scores that estimate a candidate's accuracy without training it, with their intervals.

- ``knn_loo``: k-nearest-neighbour leave-one-out accuracy (cosine similarity of
  standardised features): which images does each image's neighbourhood label right.
- ``logistic_cv``: a k-fold logistic probe (scikit-learn), the closest cheap
  stand-in for graft's head: the same standardisation of the features as the
  head's (``head.feature_moments``), then a softmax layer, L2-regularised where the
  head has early stopping and dropout. The folds are the same for every candidate,
  so two candidates compare image by image. With fewer training images than
  features it is fitted in the span of the training rows (their thin SVD), which
  gives the same solution as the full fit (the L2 optimum lies in that span) in a
  fraction of the time.
- ``bootstrap_ci`` / ``paired_ci``: 95% percentile bootstrap intervals of an
  accuracy, and of the difference of two accuracies on the same images.
- ``logme``: LogME (You et al., "LogME: Practical Assessment of Pre-trained
  Models for Transfer Learning", ICML 2021), the log marginal evidence of a
  Bayesian linear model from features to one-hot labels, maximised over its
  prior and noise precisions by the paper's fixed-point iteration; used to
  break ties.
"""

from __future__ import annotations

import numpy as np

from graft.errors import DataError

FOLDS = 5
MIN_PER_CLASS = FOLDS   # each fold holds at least one image of every class
NEIGHBOURS = 5
BOOTSTRAP = 2000
# The logistic probe's inverse L2 strength on standardised features: at 0.1 its logits spread as
# far as those of graft's head trained with the build's defaults (measured on bench_choose's
# picks: mean |logit difference| 1.4 to 2.0 for the head; 1.6 to 2.9 at C = 0.1, 2.3 to 4.9 at 1).
C = 0.1


def check_counts(y: np.ndarray, labels: list[str], where: str = "") -> None:
    """Refuse classes with fewer images than the probe's folds need, naming them and the minimum."""
    counts = np.bincount(y, minlength=len(labels))
    few = [f"{labels[i]} ({int(n)})" for i, n in enumerate(counts) if n < MIN_PER_CLASS]
    if len(labels) < 2:
        raise DataError(f"the probe needs at least two classes{where}; found {len(labels)}")
    if few:
        raise DataError(f"too few images to score{where}: the probe needs at least {MIN_PER_CLASS} "
                        f"images per class ({FOLDS}-fold probe), and {', '.join(few)} has fewer; "
                        "add images to those classes")


def fold_ids(y: np.ndarray, seed: int = 0, folds: int = FOLDS) -> np.ndarray:
    """Each image's fold (stratified, seeded), shared by every candidate."""
    from sklearn.model_selection import StratifiedKFold

    ids = np.zeros(len(y), np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        ids[test] = fold
    return ids


def moments(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature, the variance floored as the head floors it."""
    from graft.builder.head import floor_variance

    return train.mean(axis=0), np.sqrt(floor_variance(train.var(axis=0)))


def _standardise(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both standardised by ``train``'s mean and variance, as the head standardises."""
    mean, sd = moments(train)
    return (train - mean) / sd, (other - mean) / sd


def fit_linear(x: np.ndarray, y: np.ndarray, classes: int, c: float = C,
               tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """The logistic probe on standardised features ``x``: weights (D, classes) and bias (classes,)
    of a softmax layer (a binary fit becomes logits [0, z])."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    basis = None
    if x.shape[1] > len(x):   # n < D: fit on the coordinates in the span of the rows
        _, s, basis = np.linalg.svd(x, full_matrices=False)
        x = x @ basis.T
    probe = LogisticRegression(C=c, max_iter=300 if tol >= 1e-3 else 5000, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x, y)
    coef = probe.coef_ if basis is None else probe.coef_ @ basis
    weights, bias = np.zeros((coef.shape[1], classes)), np.zeros(classes)
    if len(probe.classes_) == 2:
        weights[:, probe.classes_[1]], bias[probe.classes_[1]] = coef[0], probe.intercept_[0]
    else:
        weights[:, probe.classes_], bias[probe.classes_] = coef.T, probe.intercept_
    return weights, bias


def knn_loo(x: np.ndarray, y: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Whether each image's k nearest other images (cosine) vote its label (ties: the nearer)."""
    z, _ = _standardise(np.asarray(x, np.float64), np.zeros((0, x.shape[1])))
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    similarity = z @ z.T
    np.fill_diagonal(similarity, -np.inf)
    k = min(k, len(y) - 1)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    classes = int(y.max()) + 1
    votes = np.zeros((len(y), classes))
    for rank in range(k):  # earlier neighbours weigh a hair more, which breaks ties
        np.add.at(votes, (np.arange(len(y)), y[nearest[:, rank]]), 1.0 + 1e-3 * (k - rank))
    return votes.argmax(axis=1) == y


def logistic_cv(x: np.ndarray, y: np.ndarray, folds: np.ndarray, c: float = C) -> np.ndarray:
    """Whether each image is classified right by a logistic probe trained on the other folds."""
    x = np.asarray(x, np.float64)
    classes = int(y.max()) + 1
    correct = np.zeros(len(y), bool)
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        x_train, x_test = _standardise(x[train], x[test])
        weights, bias = fit_linear(x_train, y[train], classes, c)
        correct[test] = (x_test @ weights + bias).argmax(axis=1) == y[test]
    return correct


def bootstrap_ci(correct: np.ndarray, seed: int = 0, draws: int = BOOTSTRAP) -> list[float]:
    """95% percentile bootstrap interval of the mean of ``correct`` (images resampled)."""
    values = np.asarray(correct, np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(axis=1)
    return [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])]


def paired_ci(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, list[float]]:
    """Mean of ``a - b`` on the same images, and its 95% bootstrap interval (pairs resampled)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return round(float(diff.mean()), 4), bootstrap_ci(diff, seed)


def logme(x: np.ndarray, y: np.ndarray, iterations: int = 11) -> float:
    """LogME: the mean over classes of the maximised log evidence per image (higher is better).

    For each class's one-hot column t, with features F (n x D) and eigenvalues
    sigma of F^T F (from the thin SVD of F), repeat until alpha/beta settles:
    gamma = sum(beta sigma / (alpha + beta sigma)), m = beta A^-1 F^T t with
    A = alpha I + beta F^T F, alpha = gamma / m^T m, beta = (n - gamma) / |F m - t|^2;
    then the evidence is D/2 log alpha + n/2 log beta - 1/2 log|A| - beta/2 |F m - t|^2
    - alpha/2 m^T m - n/2 log 2 pi, divided by n.
    """
    f = np.asarray(x, np.float64)
    n, d = f.shape
    u, s, vt = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    evidences = []
    for cls in range(int(y.max()) + 1):
        t = (y == cls).astype(np.float64)
        projected = s * (u.T @ t)            # V^T F^T t
        alpha, beta = 1.0, 1.0
        for _ in range(iterations):
            gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
            m_coords = beta * projected / (alpha + beta * sigma)   # m in V's basis
            m_norm = float((m_coords ** 2).sum())
            residual = float(((u * s) @ m_coords - t) @ ((u * s) @ m_coords - t))
            new_alpha, new_beta = gamma / (m_norm + 1e-5), (n - gamma) / (residual + 1e-5)
            settled = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
            alpha, beta = new_alpha, new_beta
            if settled:
                break
        log_det = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * np.log(alpha)
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2
                    - beta / 2 * residual - alpha / 2 * m_norm - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))

"""The maths of making editing directions: numpy and scikit-learn only, no files, no torch.

- `fit_boundary`: InterFaceGAN's recipe. A linear SVM (scikit-learn's LinearSVC) separates
  codes [N,D] by their labels; the unit normal of its hyperplane is the direction. Real-valued
  labels keep only the top and bottom `ratio` of the samples (InterFaceGAN: 2% each), binary
  labels keep every sample. Each class is split train/validation (InterFaceGAN: 70/30) for the
  reported accuracy; the written normal is then refit on every kept sample, which only sharpens
  it. The codes are centred and divided by one global scale first: the normal's direction is
  unchanged, but C (and convergence) no longer depend on how large the codes are.
- `project_out`: InterFaceGAN's conditional manipulation, the direction minus its component in
  the span of the condition directions, renormalised ("edit age without adding glasses").
- `CovarianceStream`: GANSpace's PCA of W from millions of samples in flat memory: batches merged
  into a running mean and scatter matrix (Chan et al.'s pairwise update, float64), then one
  eigendecomposition. Exact, so it equals an SVD of all the samples at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import E4EError

RATIO = 0.02  # InterFaceGAN's chosen_num_or_ratio for real-valued scores
SPLIT = 0.7  # InterFaceGAN's split_ratio
MIN_PER_CLASS = 5  # fewer cannot be split into train and validation sets


@dataclass
class Boundary:
    """A fitted direction: `normal` [D] (unit), and how it was made."""

    normal: np.ndarray
    label_kind: str  # "binary" | "real"
    n_samples: int  # labelled codes given
    n_positive: int  # kept, by class
    n_negative: int
    n_train: int
    n_validation: int
    train_accuracy: float
    validation_accuracy: Optional[float]
    threshold: dict = field(default_factory=dict)  # real-valued labels: the label values that bound each class


def label_classes(labels: np.ndarray, ratio: float = RATIO) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """(indices kept [M], classes 0/1 [M], kind, thresholds). Two distinct values are binary (the
    larger is positive, every sample kept); more are scores: the top and bottom `ratio` of the
    samples (at least one each) become the classes, as InterFaceGAN's train_boundary does."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if labels.size == 0:
        raise E4EError("no labelled codes")
    if not np.isfinite(labels).all():
        raise E4EError("labels must be finite numbers")
    values = np.unique(labels)
    if values.size < 2:
        raise E4EError(f"every label is {values[0]:g}: a direction needs two classes (some positive, some negative)")
    if values.size == 2:
        cls = (labels == values[1]).astype(np.int64)
        return np.arange(labels.size), cls, "binary", {"negative": float(values[0]), "positive": float(values[1])}
    if not 0 < ratio <= 0.5:
        raise E4EError(f"--ratio must be in (0, 0.5], got {ratio:g}")
    k = max(1, int(labels.size * ratio))
    order = np.argsort(-labels, kind="stable")  # highest first
    top, bottom = order[:k], order[labels.size - k:]
    if labels[top].min() <= labels[bottom].max():
        raise E4EError(f"the top and bottom {k} labels overlap (ties): use binary labels or a smaller --ratio")
    keep = np.concatenate([top, bottom])
    cls = np.concatenate([np.ones(k, np.int64), np.zeros(k, np.int64)])
    return keep, cls, "real", {"positive_min": float(labels[top].min()), "negative_max": float(labels[bottom].max())}


def split_classes(cls: np.ndarray, split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices into `cls`: each class shuffled and cut at `split` (stratified)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in (1, 0):
        idx = rng.permutation(np.flatnonzero(cls == c))
        n_train = len(idx) if split >= 1 else min(len(idx) - 1, max(1, int(round(len(idx) * split))))
        train.append(idx[:n_train])
        val.append(idx[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _standardise(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Centre on `ref`'s mean and divide by its mean per-dimension spread (one scalar: directions keep their angles)."""
    mean = ref.mean(axis=0)
    scale = float(ref.std(axis=0).mean()) or 1.0
    return (x - mean) / scale


def _svm(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    clf = LinearSVC(C=c, random_state=seed, max_iter=20_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a not fully converged normal is still usable
        clf.fit(x, y)
    return clf


def fit_boundary(codes: np.ndarray, labels: np.ndarray, *, ratio: float = RATIO, split: float = SPLIT,
                 c: float = 1.0, seed: int = 0) -> Boundary:
    """InterFaceGAN boundary of codes [N,D] with labels [N] (binary or scores): unit normal [D]
    pointing towards the positive (higher-label) class, and the held-out accuracy."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] != np.asarray(labels).reshape(-1).shape[0]:
        raise E4EError(f"codes {list(codes.shape)} and {np.asarray(labels).size} labels do not match")
    if not np.isfinite(codes).all():
        raise E4EError("codes hold NaN or infinite values")
    if not 0 < split <= 1:
        raise E4EError(f"--split must be in (0, 1], got {split:g}")
    if not (np.isfinite(c) and c > 0):
        raise E4EError(f"--svm-c must be a positive number, got {c!r}")
    keep, cls, kind, thresholds = label_classes(labels, ratio)
    n_pos, n_neg = int(cls.sum()), int((cls == 0).sum())
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        what = f"{n_pos} positive and {n_neg} negative"
        hint = " (raise --ratio or label more codes)" if kind == "real" else ""
        raise E4EError(f"too few samples: {what}; each class needs at least {MIN_PER_CLASS}{hint}")
    x = codes[keep]
    train, val = split_classes(cls, split, seed)
    clf = _svm(_standardise(x[train], x[train]), cls[train], c, seed)
    train_acc = float(clf.score(_standardise(x[train], x[train]), cls[train]))
    val_acc = float(clf.score(_standardise(x[val], x[train]), cls[val])) if len(val) else None
    final = _svm(_standardise(x, x), cls, c, seed) if len(val) else clf
    w = final.coef_.reshape(-1).astype(np.float64)
    norm = float(np.linalg.norm(w))
    if not norm > 0:
        raise E4EError("the SVM found no separating direction (all weights zero): the labels do not follow the codes")
    return Boundary(normal=w / norm, label_kind=kind, n_samples=int(codes.shape[0]), n_positive=n_pos,
                    n_negative=n_neg, n_train=int(len(train)), n_validation=int(len(val)), train_accuracy=train_acc,
                    validation_accuracy=val_acc, threshold=thresholds)


def project_out(direction: np.ndarray, conditions: np.ndarray, *, tol: float = 1e-6) -> np.ndarray:
    """`direction` [D] without its component in the span of `conditions` [K,D], unit length:
    n' = (n - Q Q^T n) / |n - Q Q^T n| with Q an orthonormal basis of the span (InterFaceGAN's
    conditional boundary, for any number of conditions)."""
    n = np.asarray(direction, dtype=np.float64).reshape(-1)
    c = np.atleast_2d(np.asarray(conditions, dtype=np.float64))
    if c.shape[1] != n.shape[0]:
        raise E4EError(f"conditions of shape {list(c.shape)} do not fit a direction of {n.shape[0]} values")
    if c.shape[0] == 0:
        return n / np.linalg.norm(n)
    u, s, _ = np.linalg.svd(c.T, full_matrices=False)  # columns of u span the conditions
    q = u[:, s > tol * max(float(s.max()), 1e-300)]
    out = n - q @ (q.T @ n)
    norm = float(np.linalg.norm(out))
    if norm < 1e-6 * float(np.linalg.norm(n)):
        raise E4EError("the direction lies in the span of the conditions: nothing is left after projecting them out")
    return out / norm


class CovarianceStream:
    """Running mean and scatter of rows of x [B,D], merged batch by batch in float64 (flat memory)."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.n = 0
        self.mean = np.zeros(self.dim)
        self.scatter = np.zeros((self.dim, self.dim))  # sum of (x - mean)(x - mean)^T

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        m = x.shape[0]
        if m == 0:
            return
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        scatter_b = xc.T @ xc
        delta = mean_b - self.mean
        total = self.n + m
        self.scatter += scatter_b + np.outer(delta, delta) * (self.n * m / total)
        self.mean += delta * (m / total)
        self.n = total

    def components(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(comp [k,D] unit rows by decreasing variance, std [k] = sqrt of each one's variance
        (n-1 denominator, as scikit-learn's explained_variance_), mean [D]). Signs: each row's
        largest entry is positive, so a run is reproducible."""
        if self.n < 2:
            raise E4EError("PCA needs at least 2 samples")
        if not 1 <= k <= self.dim:
            raise E4EError(f"--components must be 1..{self.dim}, got {k}")
        cov = self.scatter / (self.n - 1)
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)  # ascending
        order = np.argsort(vals)[::-1][:k]
        comp = vecs[:, order].T.copy()
        flip = np.sign(comp[np.arange(k), np.abs(comp).argmax(axis=1)])
        comp *= flip[:, None]
        return comp, np.sqrt(np.clip(vals[order], 0, None)), self.mean.copy()

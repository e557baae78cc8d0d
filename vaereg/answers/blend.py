"""Is a VAE a weighted merge of known VAEs? Non-negative least squares over their linear sketches.

A sketch samples every tensor at positions fixed by name and size, so the sketch of ``0.7 A + 0.3 B`` is
``0.7 sketch(A) + 0.3 sketch(B)`` up to rounding. `explain` fits the target's sketch with non-negative
weights over the candidates' sketches; when some such sum fits within rounding noise, it grows a set of
components greedily until it fits and prunes what the fit does not need, to report the smallest set.

"Within rounding noise" is measured, not guessed: each sample's stored dtype gives the step of the grid it
was rounded to (never finer than fp16's: SD weights nearly always pass through fp16 on their way), so
rounding alone leaves a squared residual of about ``sum(step^2) / 12`` - the target's own, plus each
component's times its squared weight. `misfit` is the residual in those units: about 1 for a real merge,
far above for anything else (docs/check.md has the calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Sequence

import numpy as np

from vaereg.answers.relation import sample_dtypes, sketch_values
from vaereg.identity.dtypes import GRID
from vaereg.identity.report import VaeIdentity

#: A fit within this many times the rounding noise explains the target. Merges saved in fp32, fp16 or bf16
#: measure 0.0-1.0, merges computed in fp16 arithmetic 1.2; a 0.1% perturbation of every weight 3.4, and
#: fine-tunes or unrelated VAEs 17 and up (docs/check.md).
MAX_MISFIT = 2.0


def rounding_step(values: np.ndarray, dtypes: Any) -> np.ndarray:
    """The grid step of each value's dtype at its magnitude, never finer than fp16's (0 for NaN/Inf).

    `dtypes` is one dtype for all values or one per value; dtypes without a known grid count as fp16. The
    step is the one above the value (below a power of two it is half that: close enough for a noise level).
    """
    _, exponent = np.frexp(np.where(np.isfinite(values), values, 0.0))
    if isinstance(dtypes, str):
        bits, tiny = GRID.get(dtypes, GRID["F16"])
    else:
        grids = [GRID.get(d, GRID["F16"]) for d in np.asarray(dtypes).tolist()]
        bits, tiny = np.array([g[0] for g in grids]), np.array([g[1] for g in grids])
    fp16_bits, fp16_tiny = GRID["F16"]
    step = np.maximum(np.ldexp(1.0, exponent - np.minimum(bits, fp16_bits)), np.maximum(tiny, fp16_tiny))
    return np.where(np.isfinite(values), step, 0.0)


@dataclass(frozen=True)
class Sketch:
    """A VAE's sketch values with the stored dtype of its samples (one for all, or one per sample)."""

    id: str
    values: np.ndarray
    dtypes: Any  # str, or an array of str

    @classmethod
    def of(cls, vae: VaeIdentity) -> Sketch:
        dtypes: Any = vae.dtype
        if vae.tensor_digests and len({t.dtype for t in vae.tensor_digests.values()}) > 1:
            dtypes = sample_dtypes(vae.tensor_digests)
        return cls(vae.id, sketch_values(vae), dtypes)

    def steps(self) -> np.ndarray:
        return rounding_step(self.values, self.dtypes)


@dataclass(frozen=True)
class Part:
    id: str
    weight: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "weight": round(self.weight, 4)}


@dataclass(frozen=True)
class BlendFit:
    """The smallest set of candidates whose weighted sum gives the target's sketch, within rounding noise.

    One part means the target is a copy (or precision variant) of that candidate, not a blend.
    """

    parts: tuple[Part, ...]
    residual: float  # ||target - fit|| / ||target||
    misfit: float  # residual / expected rounding residual

    @property
    def is_blend(self) -> bool:
        return len(self.parts) >= 2


def explain(target: Sketch, candidates: Sequence[Sketch], max_misfit: float = MAX_MISFIT) -> BlendFit | None:
    """Explain `target` as a non-negative weighted sum of `candidates`; None when no such sum fits.

    Candidates with another sketch length (another family or shapes) are skipped.
    """
    usable = [c for c in candidates if c.values.shape == target.values.shape]
    if not usable:
        return None
    k = np.stack([c.values for c in usable], axis=1)
    s = target.values
    rows = np.isfinite(s) & np.isfinite(k).all(axis=1)  # a NaN sample says nothing about weights
    k, s = k[rows], s[rows]
    if not s.any():
        return None
    problem = _Problem(
        gram=k.T @ k,
        rhs=k.T @ s,
        target2=float(s @ s),
        own_noise=float(np.sum(target.steps()[rows] ** 2)) / 12,
        part_noise=np.array([np.sum(c.steps()[rows] ** 2) / 12 for c in usable]),
    )
    return _fit(problem, [c.id for c in usable], max_misfit)


class Pool:
    """Sketches of one length, to ask of each whether it is a blend of the others.

    One Gram matrix serves every question: each is a solve the size of the pool over it, so asking it of
    every VAE in a library of 50 costs one 50x50 product over the samples, not 50. Answers are cached.
    """

    def __init__(self, sketches: Sequence[Sketch], max_misfit: float = MAX_MISFIT) -> None:
        self.sketches = list(sketches)
        self.max_misfit = max_misfit
        self._finite = [i for i, s in enumerate(self.sketches) if np.isfinite(s.values).all()]
        self._k: np.ndarray | None = None
        self._gram: np.ndarray | None = None
        self._noise: np.ndarray | None = None
        self._answers: dict[str, bool] = {}

    def _matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._k is None:
            self._k = np.stack([self.sketches[i].values for i in self._finite], axis=1)
            self._gram = self._k.T @ self._k
            self._noise = np.array([np.sum(self.sketches[i].steps() ** 2) / 12 for i in self._finite])
        assert self._gram is not None and self._noise is not None
        return self._k, self._gram, self._noise

    def explain(self, target: Sketch, exclude: Collection[str] = ()) -> BlendFit | None:
        """`explain(target, the pool but `exclude`)`, through the pool's Gram matrix."""
        usable = [i for i, s in enumerate(self.sketches) if s.id not in exclude]
        finite = np.isfinite(target.values).all() and all(i in self._finite for i in usable)
        if not usable or not finite or target.values.shape != self.sketches[usable[0]].values.shape:
            return explain(target, [self.sketches[i] for i in usable], self.max_misfit)
        k, gram, noise = self._matrix()
        at = np.array([self._finite.index(i) for i in usable])
        values = target.values
        if not values.any():
            return None
        problem = _Problem(
            gram=gram[at[:, None], at],
            rhs=k[:, at].T @ values,
            target2=float(values @ values),
            own_noise=float(np.sum(target.steps() ** 2)) / 12,
            part_noise=noise[at],
        )
        return _fit(problem, [self.sketches[i].id for i in usable], self.max_misfit)

    def is_blend(self, sketch_id: str) -> bool:
        if sketch_id not in self._answers:
            self._answers[sketch_id] = self._is_blend(next(i for i, s in enumerate(self.sketches) if s.id == sketch_id))
        return self._answers[sketch_id]

    def _is_blend(self, j: int) -> bool:
        target = self.sketches[j]
        if j not in self._finite:  # NaN samples: the usable rows depend on the target
            fit = explain(target, [s for i, s in enumerate(self.sketches) if i != j], self.max_misfit)
            return fit is not None and fit.is_blend
        if len(self._finite) < 3:  # a blend needs two others
            return False
        _, gram, noise = self._matrix()
        at = self._finite.index(j)
        if not gram[at, at]:
            return False
        others = np.delete(np.arange(len(self._finite)), at)
        problem = _Problem(
            gram=gram[others[:, None], others],
            rhs=gram[others, at],
            target2=float(gram[at, at]),
            own_noise=float(noise[at]),
            part_noise=noise[others],
        )
        return problem.needs_several(self.max_misfit)


def blends_among(sketches: Sequence[Sketch], max_misfit: float = MAX_MISFIT) -> set[str]:
    """The ids of the `sketches` (all of one length) that are blends of the others."""
    pool = Pool(sketches, max_misfit)
    return {s.id for s in sketches if pool.is_blend(s.id)}


def _fit(problem: _Problem, ids: Sequence[str], max_misfit: float) -> BlendFit | None:
    """The smallest set of candidates (`ids`, in the problem's order) that explains the target, or None."""
    everything = np.arange(len(ids))
    full = problem.solve(everything)
    support = np.flatnonzero(full > 0)
    if problem.misfit(support, full[support]) > max_misfit:
        return None
    chosen = _grow(problem, everything, max_misfit, limit=len(support))
    if chosen is None:  # greedy growth missed: start from everything the full fit used
        chosen = support
    chosen, weights = _prune(problem, chosen, max_misfit)
    parts = [Part(ids[j], float(w)) for j, w in zip(chosen, weights, strict=True)]
    parts.sort(key=lambda p: -p.weight)
    return BlendFit(tuple(parts), problem.residual(chosen, weights), problem.misfit(chosen, weights))


def _grow(problem: _Problem, candidates: np.ndarray, max_misfit: float, limit: int) -> np.ndarray | None:
    """Forward selection: add the candidate that lowers the misfit most until the fit holds (None: no luck
    within `limit` components). A merge of k VAEs takes k steps of one small solve per candidate."""
    chosen = np.zeros(0, dtype=np.int64)
    while len(chosen) < limit:
        trials = []
        taken = set(chosen.tolist())  # not np.setdiff1d: its np.unique imports numpy.ma (20 - 40 ms of a CLI call)
        for j in (j for j in candidates if j not in taken):
            subset = np.append(chosen, j)
            trials.append((problem.misfit(subset, problem.solve(subset)), subset))
        misfit, chosen = min(trials, key=lambda t: t[0])
        if misfit <= max_misfit:
            return chosen
    return None


def _prune(problem: _Problem, chosen: np.ndarray, max_misfit: float) -> tuple[np.ndarray, np.ndarray]:
    """Backward elimination: drop the component whose loss hurts the fit least, while it still holds."""
    weights = problem.solve(chosen)
    chosen, weights = chosen[weights > 0], weights[weights > 0]
    while len(chosen) > 1:
        trials = [(problem.misfit(rest, w), rest, w) for rest in _without_each(chosen) for w in [problem.solve(rest)]]
        misfit, rest, w = min(trials, key=lambda t: t[0])
        if misfit > max_misfit:
            break
        chosen, weights = rest[w > 0], w[w > 0]
    return chosen, weights


def _without_each(chosen: np.ndarray) -> list[np.ndarray]:
    return [np.delete(chosen, i) for i in range(len(chosen))]


@dataclass(frozen=True)
class _Problem:
    """Least squares in normal-equation form: every subset solve is tiny, whatever the sketch length."""

    gram: np.ndarray  # K^T K
    rhs: np.ndarray  # K^T s
    target2: float  # s^T s
    own_noise: float  # expected squared rounding residual of the target
    part_noise: np.ndarray  # ... of each candidate, at weight 1

    def needs_several(self, max_misfit: float) -> bool:
        """Whether some weighted sum of the candidates fits and no single one does: a blend, decided with one
        full solve (what `_fit` would find, without the search for the smallest set)."""
        diagonal = np.diag(self.gram)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(diagonal > 0, np.maximum(self.rhs / diagonal, 0.0), 0.0)
        residual2 = np.maximum(self.target2 - 2 * w * self.rhs + w * w * diagonal, 0.0)
        noise2 = self.own_noise + w * w * self.part_noise
        with np.errstate(divide="ignore", invalid="ignore"):
            single = np.sqrt(np.where(noise2 > 0, residual2 / noise2, np.where(residual2 > 0, np.inf, 0.0)))
        if len(single) and single.min() <= max_misfit:
            return False  # a copy or a precision variant of one of them
        everything = np.arange(len(self.rhs))
        full = self.solve(everything)
        support = np.flatnonzero(full > 0)
        return len(support) >= 2 and self.misfit(support, full[support]) <= max_misfit

    def solve(self, subset: np.ndarray) -> np.ndarray:
        """Non-negative least-squares weights over the candidates in `subset` (same order)."""
        if len(subset) == 0:
            return np.zeros(0)
        return nnls(self.gram[subset[:, None], subset], self.rhs[subset])

    def residual2(self, subset: np.ndarray, weights: np.ndarray) -> float:
        """||s - K w||^2 over the candidates in `subset`, from the normal equations."""
        gram = self.gram[subset[:, None], subset]
        return max(self.target2 - 2 * weights @ self.rhs[subset] + weights @ gram @ weights, 0.0)

    def residual(self, subset: np.ndarray, weights: np.ndarray) -> float:
        """||s - K w|| / ||s||."""
        return float(np.sqrt(self.residual2(subset, weights) / self.target2)) if self.target2 else 0.0

    def misfit(self, subset: np.ndarray, weights: np.ndarray) -> float:
        """The fit's residual in units of the rounding noise it should leave."""
        residual2 = self.residual2(subset, weights)
        noise2 = self.own_noise + float(np.sum(weights**2 * self.part_noise[subset]))
        if noise2 <= 0:
            return 0.0 if residual2 == 0 else float("inf")
        return float(np.sqrt(residual2 / noise2))


def nnls(gram: np.ndarray, rhs: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Lawson-Hanson active-set NNLS on the normal equations: argmin ||Kw - s|| over w >= 0.

    Takes ``K^T K`` and ``K^T s``, so each step solves a system the size of the active set.
    """
    m = len(rhs)
    w = np.zeros(m)
    passive = np.zeros(m, bool)
    tol = 1e-12 * max(float(np.abs(rhs).max(initial=0.0)), 1e-300)
    for _ in range(max_iter or 3 * m + 10):
        gradient = rhs - gram @ w
        free = ~passive & (gradient > tol)
        if not free.any():
            break
        passive[np.argmax(np.where(free, gradient, -np.inf))] = True
        while passive.any():
            idx = np.flatnonzero(passive)
            z = np.zeros(m)
            z[idx] = _solve(gram[idx[:, None], idx], rhs[idx])
            if (z[idx] > 0).all():
                w = z
                break
            # Step back towards the last feasible point until a weight reaches zero, and free that one.
            blocked = idx[z[idx] <= 0]
            alpha = np.min(w[blocked] / (w[blocked] - z[blocked]))
            w = w + alpha * (z - w)
            passive &= w > 1e-15
            w[~passive] = 0.0
    return w


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:  # duplicate candidates make the Gram matrix singular: they share weight
        return np.linalg.lstsq(gram, rhs, rcond=None)[0]

"""The statistics of an experiment summary, with the patient as the unit (summarize_experiments.py).

A method's scores form a matrix X (runs × patients): one row per finished run (every seed and every attempt of
it), one column per patient, each value a patient's score averaged over its frames (ACDC: ED and ES) and classes.
Frames of one patient are not independent cases, so nothing here counts them twice.

- `hierarchical_bootstrap`: B bootstrap samples of each method's mean: its runs resampled with replacement, then
  the patients resampled with replacement. The patient resample is drawn once per sample and shared by every
  method (the methods were scored on the same patients), so differences and ranks are paired by patient; each
  method's run draws have a stream of their own, so adding runs of one method leaves the others' samples as they were;
- `probability_of_improvement`: the share of (patient, run of A, run of B) comparisons in which A scores better
  (ties count one half);
- `wilcoxon_patients`: a paired two-sided Wilcoxon signed-rank test over patients of run-averaged scores;
- `holm`: Holm's step-down adjustment of a family of p-values;
- `rank_distribution`: how often each method ranks 1st, 2nd, ... over the bootstrap samples (challengeR's rank
  stability).
"""
import re
import zlib

import numpy as np

_FRAME = re.compile(r"_frame\d+$")


def patient_of(case):
    """The patient a case belongs to: ACDC's 'patient028_frame01' -> 'patient028'; any other case is its own."""
    return _FRAME.sub("", case)


def patient_scores(case_scores):
    """{case: score} -> {patient: mean over the patient's cases}."""
    by_patient = {}
    for case, v in case_scores.items():
        by_patient.setdefault(patient_of(case), []).append(v)
    return {p: float(np.mean(v)) for p, v in sorted(by_patient.items())}


def score_matrix(runs, patients):
    """[{patient: score}] (one dict per run) -> (runs, patients) float array in the given patient order; a patient
    a run lacks is NaN (nanmean then skips it)."""
    return np.array([[r.get(p, np.nan) for p in patients] for r in runs], dtype=np.float64).reshape(len(runs),
                                                                                                    len(patients))


def bootstrap_indices(n_runs, n_patients, n_samples, seed):
    """-> (run indices per method {method: (B, runs)}, patient indices (B, patients)). n_runs: {method: runs}.
    The patient draws come from `seed` alone and each method's run draws from `seed` and the method's name, so a
    run added to one method (or a method added to the table) moves no other method's samples."""
    patients = np.random.default_rng(seed).integers(0, n_patients, size=(n_samples, n_patients))
    runs = {m: np.random.default_rng([seed, zlib.crc32(m.encode())]).integers(0, n, size=(n_samples, n))
            for m, n in n_runs.items()}
    return runs, patients


def bootstrap_means(matrix, run_idx, patient_idx):
    """(runs, patients) matrix -> (B,) means of the bootstrap samples given by run_idx (B, runs) and patient_idx
    (B, patients): sample b is the mean over X[run_idx[b]][:, patient_idx[b]]."""
    picked = matrix[run_idx[:, :, None], patient_idx[:, None, :]]  # (B, runs, patients)
    return np.nanmean(picked, axis=(1, 2))


def hierarchical_bootstrap(matrices, n_samples=10000, seed=0):
    """{method: (runs, patients) matrix}, all over the same patients -> {method: (B,) bootstrap means}."""
    n_patients = next(iter(matrices.values())).shape[1]
    run_idx, patient_idx = bootstrap_indices({m: x.shape[0] for m, x in matrices.items()}, n_patients, n_samples,
                                             seed)
    return {m: bootstrap_means(x, run_idx[m], patient_idx) for m, x in matrices.items()}


def percentile_ci(samples, level=0.95):
    """(low, high): the central `level` interval of bootstrap samples."""
    a = (1 - level) / 2
    low, high = np.quantile(samples, [a, 1 - a])
    return float(low), float(high)


def probability_of_improvement(a, b, higher_is_better=True):
    """Share of comparisons a[i, p] vs b[j, p] (every run i of A, run j of B, patient p) where A is better; ties
    count 1/2. a: (runs_a, patients), b: (runs_b, patients)."""
    d = a[:, None, :] - b[None, :, :]  # (runs_a, runs_b, patients)
    d = d[~np.isnan(d)]
    if not higher_is_better:
        d = -d
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size) if d.size else float("nan")


def wilcoxon_patients(a, b):
    """Paired two-sided Wilcoxon signed-rank p over patients of run-averaged scores (scipy.stats.wilcoxon); nan
    when undefined (fewer than one differing patient)."""
    from scipy.stats import wilcoxon

    x, y = np.nanmean(a, axis=0), np.nanmean(b, axis=0)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) == 0 or np.all(x == y):
        return float("nan")
    return float(wilcoxon(x, y).pvalue)


def holm(pvalues):
    """Holm's step-down adjusted p-values, in the input order; NaN entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))  # monotone: never below an earlier adjusted p
        out[i] = running
    return out


def rank_distribution(samples, higher_is_better=True):
    """{method: (B,) bootstrap means} -> {method: (M,) share of samples in which it ranks 1st, 2nd, ... M-th}.
    Tied methods share the better rank."""
    from scipy.stats import rankdata

    methods = list(samples)
    values = np.stack([samples[m] for m in methods], axis=1)  # (B, M)
    ranks = rankdata(-values if higher_is_better else values, axis=1, method="min").astype(int)  # 1 = best
    shares = np.stack([(ranks == r).mean(axis=0) for r in range(1, len(methods) + 1)], axis=1)  # (M, M)
    return {m: shares[i] for i, m in enumerate(methods)}

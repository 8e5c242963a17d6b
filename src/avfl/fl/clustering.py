"""M3Fed's server-side mathematics, as pure functions (Li et al., ACM MM 2024; our notes,
shared/papers/M3Fed-notes.md): gradient-consistency-based clustering (GCBC, Eq. 5-6) and
the global consensus collaboration matrix (GCCM, Eq. 7).

- GCBC: each client's deviation Theta_i = theta_i - the plain mean of the round's uploads;
  sigma_ij = the Pearson correlation of Theta_i and Theta_j (Eq. 5, each centred over its own
  entries); the affinity A_ij = 1 - arccos(sigma_ij) / pi (Eq. 6), in [0, 1] with A_ii = 1;
  spectral clustering of A into mu clusters (scikit-learn, seeded).
- GCCM: S_ij = rho_j exp(-||G_i - G_j||_F^2) / sum_z rho_z exp(-||G_i - G_z||_F^2), rho the
  clients' data shares; G_i <- sum_j S_ij G_j (the text's G_i^t on the right is a typo for
  G_j^t). The exponent has no scale: operators that drift apart make S the identity.

float64 throughout: the affinities feed a clustering whose labels must not flip on the last bit.
"""

from __future__ import annotations

import numpy as np


def deviation_similarity(uploads: np.ndarray) -> np.ndarray:
    """(K, P) flattened uploads -> (K, K) Pearson correlations of their deviations from the mean."""
    theta = np.asarray(uploads, dtype=np.float64)
    deviation = theta - theta.mean(axis=0, keepdims=True)
    centred = deviation - deviation.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    norms = np.where(norms > 0, norms, 1.0)  # a client at the centroid correlates with no one
    unit = centred / norms[:, None]
    sigma = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(sigma, 1.0)
    return sigma


def angular_affinity(sigma: np.ndarray) -> np.ndarray:
    """Eq. 6: 1 - arccos(sigma) / pi."""
    return 1.0 - np.arccos(np.clip(sigma, -1.0, 1.0)) / np.pi


def spectral_clusters(affinity: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster labels 0..m-1 (m = min(n_clusters, K)), numbered by first appearance."""
    k = affinity.shape[0]
    m = max(1, min(n_clusters, k))
    if m == 1:
        return np.zeros(k, dtype=np.int64)
    import warnings

    from sklearn.cluster import SpectralClustering

    with warnings.catch_warnings():  # "k >= N": a round's few clients, solved densely instead
        warnings.filterwarnings("ignore", message="k >= N", category=RuntimeWarning)
        found = SpectralClustering(
            n_clusters=m, affinity="precomputed", random_state=seed % 2**32, assign_labels="kmeans"
        ).fit_predict(affinity)
    order = {label: i for i, label in enumerate(dict.fromkeys(found.tolist()))}
    return np.array([order[label] for label in found], dtype=np.int64)


def gcbc(uploads: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The round's clusters and the affinity they came from."""
    affinity = angular_affinity(deviation_similarity(uploads))
    return spectral_clusters(affinity, n_clusters, seed), affinity


def consensus_matrix(operators: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Eq. 7: (K, ...) operators and (K,) data shares -> (K, K) row-stochastic S."""
    g = np.asarray(operators, dtype=np.float64).reshape(len(operators), -1)
    squared = ((g[:, None, :] - g[None, :, :]) ** 2).sum(axis=-1)
    logits = np.log(np.asarray(shares, dtype=np.float64))[None, :] - squared
    logits -= logits.max(axis=1, keepdims=True)  # exp of the largest is 1: no underflow to 0/0
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def consensus_update(operators: np.ndarray, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every G_i <- sum_j S_ij G_j; and S (its diagonal says how much each kept its own)."""
    s = consensus_matrix(operators, shares)
    g = np.asarray(operators, dtype=np.float64)
    return np.tensordot(s, g, axes=1), s

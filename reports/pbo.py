"""Probability of backtest overfitting by combinatorially symmetric cross-validation (CSCV).

Bailey, Borwein, Lopez de Prado and Zhu (2015), "The probability of backtest
overfitting", J. Computational Finance 20(4). The returns of ``N`` trials (the
configurations a researcher could have picked from) over ``T`` bars are cut
into ``S`` equal blocks of consecutive bars. For every way of choosing ``S/2``
blocks as the in-sample half, the trial with the best in-sample Sharpe is
taken and its out-of-sample Sharpe ranked among all trials':
``w = rank / (N + 1)``, logit ``l = ln(w / (1 - w))``. PBO is the share of
splits in which the in-sample winner ranks at or below the out-of-sample median
(``l <= 0``). With no real edge anywhere the winner is a lucky draw and PBO is
about 0.5; a trial with a real edge keeps winning out of sample and PBO is low.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

#: Blocks the bars are cut into: C(16, 8) = 12,870 splits, as in the paper's examples.
DEFAULT_BLOCKS = 16
#: Fewest bars per block for its Sharpe to mean anything.
MIN_BLOCK_BARS = 10


@dataclass(frozen=True)
class PBOResult:
    """PBO and what it was computed from."""

    pbo: float
    n_trials: int
    n_blocks: int
    n_splits: int
    logits: np.ndarray


def choose_blocks(n_bars: int, wanted: int = DEFAULT_BLOCKS) -> int:
    """The largest even block count <= ``wanted`` leaving >= MIN_BLOCK_BARS per block (0: none)."""
    blocks = min(wanted, n_bars // MIN_BLOCK_BARS)
    blocks -= blocks % 2
    return blocks if blocks >= 4 else 0


def _sharpe(total: np.ndarray, squares: np.ndarray, count: np.ndarray) -> np.ndarray:
    mean = total / count
    var = (squares - count * mean**2) / (count - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sharpe = mean / np.sqrt(var)
    # A flat trial (zero variance) can never be the in-sample pick, nor beat anyone.
    return np.where(np.isfinite(sharpe) & (var > 0), sharpe, -np.inf)


def pbo_cscv(returns: np.ndarray, n_blocks: int = DEFAULT_BLOCKS) -> PBOResult:
    """PBO of picking the best of the columns of ``returns`` (bars x trials) by in-sample Sharpe.

    Parameters
    ----------
    returns : np.ndarray
        ``T x N`` per-bar returns, one column per trial, rows aligned in time,
        no NaN. Rows that do not fill a whole block are dropped from the start
        (the most recent bars are kept).
    n_blocks : int
        Even number of blocks ``S``; lowered by :func:`choose_blocks` when the
        series is too short for it.

    Returns
    -------
    PBOResult
        ``pbo`` is NaN when there are fewer than 2 trials or too few bars.
    """
    x = np.asarray(returns, dtype=float)
    if x.ndim != 2 or np.isnan(x).any():
        raise ValueError("returns must be a 2-D array (bars x trials) without NaN")
    n_bars, n_trials = x.shape
    blocks = choose_blocks(n_bars, n_blocks)
    if n_trials < 2 or blocks == 0:
        return PBOResult(math.nan, n_trials, blocks, 0, np.empty(0))
    size = n_bars // blocks
    x = x[n_bars - size * blocks :].reshape(blocks, size, n_trials)
    total, squares = x.sum(axis=1), (x**2).sum(axis=1)  # blocks x trials
    chosen = np.array(list(itertools.combinations(range(blocks), blocks // 2)))
    mask = np.zeros((len(chosen), blocks))
    np.put_along_axis(mask, chosen, 1.0, axis=1)
    count = size * blocks / 2
    is_sharpe = _sharpe(mask @ total, mask @ squares, count)
    oos_sharpe = _sharpe((1 - mask) @ total, (1 - mask) @ squares, count)
    best = np.argmax(is_sharpe, axis=1)
    best_oos = oos_sharpe[np.arange(len(chosen)), best]
    # Rank 1 = worst out of sample; ties count half, so identical trials sit at the median.
    rank = (oos_sharpe < best_oos[:, None]).sum(axis=1) + 0.5 * (
        (oos_sharpe == best_oos[:, None]).sum(axis=1) + 1
    )
    w = rank / (n_trials + 1)
    logits = np.log(w / (1 - w))
    return PBOResult(float(np.mean(logits <= 0)), n_trials, blocks, len(chosen), logits)

"""How a policy is (meta-)trained: ``TrainConfig`` and the choices it may name.

Torch-free, so that a study config (:mod:`backtests.config`) validates its
``[meta]`` section, and the command line answers ``--help`` or names a bad key,
without loading torch. :mod:`metamodels.model` re-exports everything here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# How the memory policy may score past segments (metamodels.memory_policy).
ATTENTIONS = ("dot", "cosine")
ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "context", "memory")
# Learners that adapt by a forward pass over the window (metamodels.conditioned_train).
FORWARD_LEARNERS = ("context", "memory")
# Where a gradient learner's meta-training starts (see TrainConfig.init).
INITS = ("random", "erm")
# A learned inner step size is the default where the algorithm has a gradient for it.
_LR_DEFAULT = {
    "maml": True,
    "fomaml": True,
    "reptile": False,
    "metasgd": True,
    "context": False,
    "memory": False,
}


@dataclass(frozen=True)
class TrainConfig:
    """How to (meta-)train the policy.

    Parameters
    ----------
    algorithm : {"maml", "fomaml", "reptile", "metasgd", "context", "memory"}
        Meta-learner (see :mod:`metamodels.learners`; ``context`` and ``memory``
        adapt by a forward pass, see :mod:`metamodels.conditioned_train`). ERM
        uses the same config.
    compare : tuple of {"context", "memory"}
        Studies only: also train these learners with the same settings and trade
        them as ``meta_context`` / ``meta_memory`` with their ablations.
    meta_steps : int
        Maximum outer (meta-)optimiser steps; early stopping may end sooner.
    tasks_per_step : int
        Tasks per meta-batch.
    inner_steps : int
        SGD steps of each adaptation (training and trading alike).
    inner_lr : float
        Inner step size (the starting value when learned).
    learn_inner_lr : bool or None
        None = the algorithm's default: a learned scalar for maml / fomaml,
        per-parameter for metasgd (always), fixed for reptile (never learnable).
    outer_lr : float
        AdamW step size of the outer loop.
    weight_decay : float
        AdamW decoupled weight decay on the policy weights (not on step sizes);
        with early stopping, the guard against memorising the training period.
    val_fraction : float
        Share of the training period's dates, taken from its END, whose tasks
        validate; training tasks end before it (no label overlaps it). 0 = none.
    val_tasks : int
        At most this many validation tasks (evenly spaced anchors).
    eval_every : int
        Meta-steps between validations.
    patience : int
        Stop after this many validations without a new best validation loss;
        the best validated parameters are returned.
    seed : int
        Fixes initial weights, task sampling and hence the result.
    memory_attention : {"dot", "cosine"}
        How the memory policy scores past segments against the current window
        (:mod:`metamodels.memory_policy`): scaled dot product, or cosine times a
        learned scale. Other learners ignore it.
    init : {"random", "erm"}
        Where a gradient learner's meta-training starts: the seeded random weights,
        or the weights ERM fits to the same training bars with the same settings and
        seed (pooled training first, then meta-training on top of it). The context
        and memory learners ignore it; the random-init ablation stays random.
    unadapted_weight : float
        A gradient learner's meta-loss adds this weight times the query loss of
        the initial weights before any inner step (0 = plain meta-learning): the
        initial weights must then trade well on their own too, and adaptation
        starts from them (:class:`metamodels.learners.MetaLearner`). The context
        and memory learners ignore it.
    forward_meta_steps, forward_outer_lr : int or None, float or None
        ``meta_steps`` and ``outer_lr`` of the context and memory learners
        (None: the same as the gradient learners'). They train a different
        network by a forward pass, not SGD steps, so a study can give them
        their own budget, chosen on its validation splits like every setting.
    threads : int
        Torch intra-op threads while training (restored afterwards). The
        tensors are small, so extra threads gain little, and on a busy machine
        a parallel op waits for its slowest thread; a fixed count also keeps
        results independent of the machine's core count.
    """

    # Defaults picked by validation loss only (the later part of each training
    # period) on the basket ETFs 2005-2011 and the synthetic study market: the
    # smaller inner and outer step sizes and the stronger weight decay won on both.
    algorithm: str = "maml"
    compare: tuple[str, ...] = ()
    meta_steps: int = 600
    tasks_per_step: int = 64
    inner_steps: int = 5
    inner_lr: float = 0.1
    learn_inner_lr: bool | None = None
    outer_lr: float = 3e-3
    weight_decay: float = 0.1
    val_fraction: float = 0.25
    val_tasks: int = 512
    eval_every: int = 20
    patience: int = 8
    seed: int = 0
    threads: int = 1
    memory_attention: str = "dot"
    init: str = "random"
    unadapted_weight: float = 0.0
    forward_meta_steps: int | None = None
    forward_outer_lr: float | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"train.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        object.__setattr__(self, "compare", tuple(self.compare))
        if self.memory_attention not in ATTENTIONS:
            raise ValueError(
                f"train.memory_attention must be one of {ATTENTIONS}, got {self.memory_attention!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"train.init must be one of {INITS}, got {self.init!r}")
        if not (self.unadapted_weight >= 0 and math.isfinite(self.unadapted_weight)):
            raise ValueError(
                f"train.unadapted_weight must be a number >= 0, got {self.unadapted_weight!r}"
            )
        for name in self.compare:
            if name not in FORWARD_LEARNERS:
                raise ValueError(f"train.compare lists {name!r}; it takes {list(FORWARD_LEARNERS)}")
        # The forward_* keys may be unset (None): those learners then take the shared value.
        for name in (
            "meta_steps",
            "forward_meta_steps",
            "tasks_per_step",
            "val_tasks",
            "eval_every",
            "patience",
            "threads",
        ):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {value}")
        if self.inner_steps < 0:
            raise ValueError(f"train.inner_steps must be >= 0, got {self.inner_steps}")
        for name in ("inner_lr", "outer_lr", "forward_outer_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"train.{name} must be a positive number, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.learn_inner_lr is True and self.algorithm == "reptile":
            raise ValueError(
                "train.learn_inner_lr = true is impossible for reptile (no gradient "
                "for the step size); leave it unset or use maml / fomaml / metasgd"
            )
        if self.learn_inner_lr is False and self.algorithm == "metasgd":
            raise ValueError(
                "train.learn_inner_lr = false turns metasgd into maml; "
                'use algorithm = "maml" instead'
            )

    def for_learner(self, algorithm: str) -> TrainConfig:
        """This config for ``algorithm``, with the forward learners' own settings applied."""
        if algorithm not in FORWARD_LEARNERS:
            return replace(self, algorithm=algorithm)
        return replace(
            self,
            algorithm=algorithm,
            meta_steps=self.forward_meta_steps or self.meta_steps,
            outer_lr=self.forward_outer_lr or self.outer_lr,
        )

    @property
    def learns_inner_lr(self) -> bool:
        """Whether the inner step size(s) are learned (resolving the None default)."""
        if self.learn_inner_lr is None:
            return _LR_DEFAULT[self.algorithm]
        return bool(self.learn_inner_lr)

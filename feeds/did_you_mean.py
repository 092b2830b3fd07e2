""" "Did you mean" hints for unknown names: one matcher for every place that refuses a key.

A typo in a config key, a CSV column, a detector name or a checkpoint field gets the same
suggestion, found the same way. It lives in ``feeds`` because that is the lowest folder that
refuses names (CSV columns); every other folder may import it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, get_args, get_origin

__all__ = ["closest", "did_you_mean", "known_fields"]


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option that ``word`` most likely misspells, or None if none is close.

    Uses :func:`difflib.get_close_matches` with its default cutoff (0.6 similarity).
    """
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return match[0] if match else None


def did_you_mean(word: str, options: Iterable[str], prefix: str = "") -> str:
    """``"did you mean 'x'?"`` for the closest option, or ``""`` when none is close.

    ``prefix`` is put before the suggestion, e.g. ``"meta."`` to suggest a dotted config key.
    Callers add their own punctuation around it (``"; "`` or parentheses).
    """
    match = closest(word, options)
    return f"did you mean {prefix + match!r}?" if match else ""


def known_fields(model: Any, loc: Sequence[Any]) -> list[str]:
    """Field names of the pydantic (sub)model that ``loc`` points into; ``[]`` if none.

    ``loc`` is the path of a pydantic error without its last part (the unknown key itself).
    A ``dict[str, Model]`` field takes the dict's key as the next part of the path.
    """
    steps = list(loc)
    while steps:
        field = model.model_fields.get(str(steps.pop(0)))
        if field is None:
            return []
        annotation = field.annotation
        if get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
            if steps:
                steps.pop(0)
        if not (isinstance(annotation, type) and hasattr(annotation, "model_fields")):
            return []
        model = annotation
    return list(model.model_fields)

"""API keys of the model service: where they come from and how a request proves one.

Keys come from the environment variable ``METABT_API_KEYS`` (comma-separated)
and/or a keys file (one key per line, ``#`` comments). A request carries one
as ``Authorization: Bearer <key>``. It is compared with every configured key
in constant time (``hmac.compare_digest``, no early exit on the first match),
so response timing tells nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from metabt.backtests.serve.errors import ApiError, ServeError

KEYS_ENV = "METABT_API_KEYS"
# auto_error=False: a missing header is answered by KeyChecker with the service's own 401.
_BEARER = HTTPBearer(auto_error=False, description="An API key of the server")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
# Shorter keys are guessable; refuse them at start rather than serve behind them.
MIN_KEY_LENGTH = 16


def _check(key: str, where: str) -> str:
    if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
        raise ServeError(
            f"{where}: an API key is {len(key)} characters or holds spaces; use "
            f"keys of at least {MIN_KEY_LENGTH} characters without spaces, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return key


def load_keys(
    keys_file: Path | None = None, environ: dict[str, str] | None = None
) -> tuple[str, ...]:
    """The configured API keys (environment first, then the file), without duplicates.

    Raises
    ------
    ServeError
        The keys file is missing or unreadable, or a key is too short.
    """
    env = os.environ if environ is None else environ
    keys = [_check(k.strip(), KEYS_ENV) for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
    if keys_file is not None:
        path = Path(keys_file)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeError(
                f"{path}: cannot read the keys file ({exc}); pass a text file with one key per line"
            ) from None
        for n, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                keys.append(_check(text, f"{path}: line {n}"))
    return tuple(dict.fromkeys(keys))


class KeyChecker:
    """The API-key check: 401 unless the request carries one of ``keys``.

    With no keys (only allowed with ``--insecure-local`` on 127.0.0.1) every
    request passes.
    """

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def matches(self, given: str) -> bool:
        """True if ``given`` equals a configured key; time independent of where it differs."""
        candidate = given.encode()
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(candidate, key)
        return found

    def check(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        """Raise a 401 :class:`ApiError` unless ``credentials`` hold a configured key."""
        if not self._keys:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(
                401,
                "unauthorized",
                "missing API key; send the header 'Authorization: Bearer <key>'",
                challenge,
            )
        if not self.matches(credentials.credentials):
            raise ApiError(401, "unauthorized", "wrong API key", challenge)

    def dependency(self) -> Callable[..., None]:
        """The function to put in a router's ``dependencies`` (shows the scheme in /docs)."""

        def require_key(credentials: Credentials) -> None:
            self.check(credentials)

        return require_key

"""The checks every params section runs on its values: one-line errors that name the key.

Kept apart from :mod:`meiscope.config` so that a recording package can declare its own params
sections (``recordings/<kind>/settings.py``) with the same checks.
"""

from __future__ import annotations

from meiscope.errors import MeiscopeError


class ConfigError(MeiscopeError, ValueError):
    """A value in params.yaml (or an override) is unknown, mistyped or out of range."""


def require(condition: bool, key: str, message: str) -> None:
    """Refuse ``key`` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"params: '{key}' {message}")


def positive(value: float, key: str) -> None:
    """``value`` must be > 0."""
    require(value > 0, key, f"must be > 0 (got {value})")


def fraction(value: float, key: str, low_open: bool = False) -> None:
    """``value`` must be in [0, 1] (``low_open``: in (0, 1])."""
    ok = (0 < value <= 1) if low_open else (0 <= value <= 1)
    require(ok, key, f"must be in {'(0, 1]' if low_open else '[0, 1]'} (got {value})")


def one_of(value: str, choices: tuple[str, ...], key: str) -> None:
    """``value`` must be one of ``choices``."""
    require(value in choices, key, f"must be one of {list(choices)} (got {value!r})")

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


def at_least(value: float, low: float, key: str) -> None:
    """``value`` must be >= ``low``."""
    require(value >= low, key, f"must be >= {low} (got {value})")


SEED_LIMIT = 2**32  # numpy's legacy seeding and most CUDA generators take 32-bit seeds


def seed(value: int, key: str) -> None:
    """``value`` must be a usable random seed: an integer in [0, 2**32)."""
    require(0 <= value < SEED_LIMIT, key, f"must be a seed in [0, 2**32) (got {value})")


def physical_memory_bytes() -> int:
    """This machine's physical memory in bytes (0 when the platform does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 0


def fits_memory(need_bytes: float, key: str, what: str) -> None:
    """Refuse ``key`` when ``what`` would need more memory than this machine has (before anything allocates it)."""
    have = physical_memory_bytes()
    require(have <= 0 or need_bytes <= have, key,
            f"is too large: {what} would need at least {need_bytes / 1e9:.1f} GB of memory, "
            f"more than this machine's {have / 1e9:.1f} GB")

"""Process-wide configuration (spec §1.6): clock mode, step mode, misuse policy."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # no runtime import of typing: it would double import time


if TYPE_CHECKING:
    from typing import Final, Literal, TypeAlias

    ClockModeName: TypeAlias = Literal["cpu", "rusage", "wall", "off"]
    StepModeName: TypeAlias = Literal["exact", "lazy", "sampled"]
    MisusePolicy: TypeAlias = Literal["warn", "raise", "ignore"]

CLOCK_MODES: Final = frozenset(("cpu", "rusage", "wall", "off"))
STEP_MODES: Final = frozenset(("exact", "lazy", "sampled"))
MISUSE_POLICIES: Final = frozenset(("warn", "raise", "ignore"))


class _Config:
    """The live settings; read them through the module-level ``config``."""

    __slots__ = ("clock_mode", "default_server_name", "misuse", "step_mode")

    def __init__(self) -> None:
        self.clock_mode: ClockModeName = "wall" if sys.platform == "win32" else "cpu"
        self.step_mode: StepModeName = "sampled"
        self.misuse: MisusePolicy = "warn"
        self.default_server_name: str = "localhost"


config: Final = _Config()


def _check(kind: str, value: str, allowed: frozenset[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"invalid {kind} {value!r}: expected one of {', '.join(sorted(allowed))}")


def configure(
    *,
    clock: ClockModeName | None = None,
    step_mode: StepModeName | None = None,
    misuse: MisusePolicy | None = None,
    default_server_name: str | None = None,
) -> None:
    """Change the process-wide settings; ``None`` keeps a value.

    Safe at any time: a clock change applies at each thread's next checkpoint,
    dropping the interval in progress (it was measured with the old clock).

    >>> configure(clock="wall", misuse="raise")
    """
    if clock is not None:
        _check("clock mode", clock, CLOCK_MODES)
    if step_mode is not None:
        _check("step mode", step_mode, STEP_MODES)
    if misuse is not None:
        _check("misuse policy", misuse, MISUSE_POLICIES)
    if default_server_name is not None and (
        not isinstance(default_server_name, str) or not default_server_name
    ):
        raise ValueError(f"invalid default_server_name {default_server_name!r}: expected a non-empty str")
    if step_mode is not None:
        config.step_mode = step_mode
    if misuse is not None:
        config.misuse = misuse
    if default_server_name is not None:
        config.default_server_name = default_server_name
    if clock is not None:
        from . import clock as _clock

        _clock._set_mode(clock)
    elif step_mode is not None:
        from . import clock as _clock

        _clock._bump_generation()


def _from_environment() -> None:
    """Apply ``LOGCONTEXT_CLOCK``, ``LOGCONTEXT_STEP_MODE``, ``LOGCONTEXT_MISUSE``.

    A bad value is reported on stderr and ignored rather than breaking import.
    """
    for env, key, allowed in (
        ("LOGCONTEXT_CLOCK", "clock", CLOCK_MODES),
        ("LOGCONTEXT_STEP_MODE", "step_mode", STEP_MODES),
        ("LOGCONTEXT_MISUSE", "misuse", MISUSE_POLICIES),
    ):
        value = os.environ.get(env)
        if value is None or value == "":
            continue
        if value not in allowed:
            print(
                f"logcontext: ignoring {env}={value!r}: expected one of {', '.join(sorted(allowed))}",
                file=sys.stderr,
            )
            continue
        configure(**{key: value})  # type: ignore[arg-type]

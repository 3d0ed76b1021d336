"""What the entry points share apart from Hydra: how an expected error ends a command."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gpt_oss.model.config import ConfigError
from gpt_oss.training.checkpoint import CheckpointError

Result = TypeVar("Result")


def exit_on_input_error(run: Callable[..., Result], *args: object) -> Result:
    """run(*args); a bad config, checkpoint or input (ConfigError, CheckpointError, ValueError)
    ends the command with exit status 1 and "ErrorType: message" on stderr, not a traceback."""
    try:
        return run(*args)
    except (ConfigError, CheckpointError, ValueError) as error:
        raise SystemExit(f"{type(error).__name__}: {error}") from error

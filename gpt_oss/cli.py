"""What the entry points share apart from Hydra: how an expected error ends a command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from gpt_oss.model.config import ConfigError
from gpt_oss.training.checkpoint import CheckpointError

Result = TypeVar("Result")


INPUT_ERROR_STATUS = 2  # as train's: a usage error, not a crash (status 1 is a traceback)


def exit_on_input_error(run: Callable[..., Result], *args: object) -> Result:
    """run(*args); a bad config, checkpoint or input (ConfigError, CheckpointError, ValueError)
    ends the command with exit status 2 and "ErrorType: message" on stderr, not a traceback.
    stderr, not the log: some entry points disable logging (bench, info only print)."""
    try:
        return run(*args)
    except (ConfigError, CheckpointError, ValueError) as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(INPUT_ERROR_STATUS) from error

"""Weights & Biases logger: the mode asked for, offline in seconds without a network, and an
offline record that is complete on disk when the run ends.

Mode (logger.wandb.mode): an explicit online/offline/disabled is used as given. `auto` honours
WANDB_MODE and `wandb offline`; otherwise it is online only when an API key is configured and
the W&B server accepts a connection within `probe_timeout` seconds, and offline in every other
case (no key, no network), so a run never waits init_timeout for a server it cannot reach. An
online start that fails anyway falls back to an offline run: the record is kept either way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpt_oss.model.config import ConfigError
from gpt_oss.training.tracking import NullLogger, flatten
from gpt_oss.validation import ranged_args

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
ENV_MODES = {
    "online": "online",
    "offline": "offline",
    "disabled": "disabled",
    "dryrun": "offline",
    "run": "online",
}  # WANDB_MODE's values, as wandb reads them
MINIMISED = ("val/loss", "val/bpb", "val/perplexity", "train/loss")  # best = min in the summary
CONSOLES = ("auto", "off", "wrap", "redirect", "wrap_raw", "wrap_emu")  # W&B's console setting


def wandb_logged_in() -> bool:
    """True when an API key is configured (env or netrc), so online mode cannot prompt."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def server_reachable(base_url: str, timeout: float) -> bool:
    """True when a TCP connection to the W&B server (or to the HTTPS proxy, when one is set)
    opens within `timeout` seconds; name resolution is bounded by the same timeout."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy or base_url)
    if not url.hostname:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((url.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    probe = threading.Thread(target=connect, daemon=True)  # getaddrinfo has no timeout of its own
    probe.start()
    probe.join(timeout + 0.5)
    return bool(result and result[0])


def resolve_mode(mode: str, probe_timeout: float = 3.0) -> tuple[str, str]:
    """(W&B mode, why) for logger.wandb.mode, decided before wandb.init: see the module doc."""
    if mode not in MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r} is invalid: valid are {MODES}")
    if mode != "auto":
        return mode, f"logger.wandb.mode={mode}"
    env = os.environ.get("WANDB_MODE")
    if env:
        if env not in ENV_MODES:
            raise ConfigError(f"WANDB_MODE={env!r} is invalid: valid are {tuple(ENV_MODES)}")
        return ENV_MODES[env], f"WANDB_MODE={env}"
    import wandb

    settings = wandb.setup().settings  # reads `wandb offline` / `wandb disabled` settings files
    if settings.mode in ENV_MODES and ENV_MODES[settings.mode] != "online":
        return ENV_MODES[settings.mode], f"W&B settings: mode={settings.mode}"
    if not wandb_logged_in():
        return "offline", "no W&B API key (wandb login or WANDB_API_KEY)"
    if not server_reachable(settings.base_url, probe_timeout):
        return "offline", f"{settings.base_url} unreachable within {probe_timeout:g} s"
    return "online", "API key set and the server answers"


def checkpoints_to_prune(logged: list[tuple[str, int]], keep: int) -> list[int]:
    """Indices into `logged` ((name, step) of each checkpoint version, oldest first) that
    retention deletes: all but the newest `keep` versions and the newest "best"."""
    best = max((i for i, (name, _) in enumerate(logged) if name == "best"), default=None)
    newest = set(range(max(len(logged) - keep, 0), len(logged)))
    return [i for i in range(len(logged)) if i not in newest and i != best]


@ranged_args(init_timeout="(0, inf)", probe_timeout="(0, inf)", checkpoint_keep="[1, inf)")
class WandbLogger(NullLogger):
    """`logger=wandb`. Never fatal: a failed call is a warning and the next call is tried again.

    Logs the flattened resolved config, train and validation scalars (val loss/bpb/perplexity
    summarised as min and last), the loss plot, per evaluation the expert load as one table
    and one heatmap, and (opt-in) checkpoints as versions of a `model` artifact. The job type,
    the console (stdout/stderr) and the git commit and dirty flag go with the run.
    """

    def __init__(
        self,
        project: str = "gpt-oss-lab",
        entity: str | None = None,
        mode: str = "auto",
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        job_type: str = "train",
        init_timeout: float = 30.0,
        probe_timeout: float = 3.0,
        console: str = "auto",
        log_checkpoints: bool = False,
        checkpoint_keep: int = 2,
    ):
        if mode not in MODES:
            raise ConfigError(f"logger.wandb.mode={mode!r} is invalid: valid are {MODES}")
        if console not in CONSOLES:
            raise ConfigError(f"logger.wandb.console={console!r} is invalid: valid are {CONSOLES}")
        if checkpoint_keep < 1:
            raise ConfigError(
                f"logger.wandb.checkpoint_keep={checkpoint_keep} is invalid: must be >= 1"
            )
        self.project, self.entity, self.mode = project, entity, mode
        self.group, self.name, self.tags, self.job_type = group, name, list(tags or []), job_type
        self.init_timeout, self.probe_timeout, self.console = init_timeout, probe_timeout, console
        self.log_checkpoints, self.checkpoint_keep = log_checkpoints, checkpoint_keep
        self.run = None
        self.run_id: str | None = None
        self.resolved: tuple[str, str] | None = None  # (mode, why), once started
        self.start_seconds: float | None = None
        self._checkpoints: list[tuple[Any, str, int]] = []  # (artifact, name, step), oldest first
        self._pending: tuple[Any, list[str], int] | None = None  # staged, not yet logged
        self._failed: set[str] = set()

    # ------------------------------------------------------------------ start
    def start(self, run_dir: Path, config: dict, run_id: str | None = None, step: int = 0) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        began = time.perf_counter()
        try:
            self.resolved = resolve_mode(self.mode, self.probe_timeout)
            self.run = self._init(self.resolved[0], run_dir, config, run_id)
        except Exception as error:  # W&B must never stop training
            self._warn("init", error)
            if self.resolved and self.resolved[0] == "online":
                self._fall_back_offline(run_dir, config, run_id)
        self.start_seconds = time.perf_counter() - began
        if self.run is None:
            return
        self.run_id = self.run.id
        try:
            for key in MINIMISED:
                self.run.define_metric(key, summary="min,last")
        except Exception as error:
            self._warn("define_metric", error)
        mode, why = self.resolved
        log.info("W&B %s (%s), started in %.1f s: %s", mode, why, self.start_seconds, self.run.dir)

    def _init(self, mode: str, run_dir: Path, config: dict, run_id: str | None):
        import wandb

        provenance = config.get("provenance") or {}
        tags = self.tags + (["git-dirty"] if provenance.get("git_dirty") else [])
        settings = wandb.Settings(
            init_timeout=self.init_timeout,
            console=self.console,
            git_commit=provenance.get("git_commit"),
        )
        return wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group,
            name=self.name,
            tags=tags,
            job_type=self.job_type,
            config=flatten(config),
            dir=str(run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            mode=mode,
            settings=settings,
        )

    def _fall_back_offline(self, run_dir: Path, config: dict, run_id: str | None) -> None:
        self.resolved = ("offline", f"online start failed; {self.resolved[1]}")
        try:
            self.run = self._init("offline", run_dir, config, run_id)
        except Exception as error:
            self._warn("offline init", error)

    # ------------------------------------------------------------------ logging
    def _warn(self, what: str, error: Exception) -> None:
        """Warn once per kind of call; the run stays open (a failed log must not lose the rest)."""
        if what not in self._failed:
            self._failed.add(what)
            log.warning(
                "W&B %s failed (%s: %s); training goes on", what, type(error).__name__, error
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self._log_pending_checkpoint()
            self.run.log(metrics, step=step)
        except Exception as error:
            self._warn("log", error)

    def log_image(self, key: str, path: Path, step: int) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)
        except Exception as error:
            self._warn("log_image", error)

    def log_expert_load(self, load: list[list[float]], step: int) -> None:
        """One table (a row per layer, a column per expert) and one heatmap per evaluation,
        instead of a scalar per layer and expert (768 for model=full)."""
        if self.run is None:
            return
        try:
            import matplotlib.pyplot as plt
            import wandb

            from gpt_oss.studies.plots import expert_load_figure

            columns = ["layer"] + [f"expert{e}" for e in range(len(load[0]))]
            table = wandb.Table(
                columns=columns, data=[[layer, *row] for layer, row in enumerate(load)]
            )
            fig = expert_load_figure(load, title=f"expert load at step {step}")
            image = wandb.Image(fig)
            plt.close(fig)
            self.run.log({"expert_load/table": table, "expert_load/heatmap": image}, step=step)
        except Exception as error:
            self._warn("log_expert_load", error)

    def log_checkpoint(self, path: Path, name: str, step: int) -> None:
        """With log_checkpoints=true: the checkpoint as a version of the artifact
        `checkpoint-<run id>` (type model), aliased `name` and `step-N`. Checkpoints of one step
        (best and last hold the same weights) become one version with both aliases; the file is
        copied into W&B's staging area now, before the trainer can overwrite it."""
        if self.run is None or not self.log_checkpoints:
            return
        try:
            if self._pending and self._pending[2] == step:
                self._pending[1].append(name)
                return
            self._log_pending_checkpoint()
            import wandb

            artifact = wandb.Artifact(
                f"checkpoint-{self.run.id}", type="model", metadata={"step": step}
            )
            path = Path(path)
            artifact.add_dir(str(path)) if path.is_dir() else artifact.add_file(
                str(path), name="model.pt"
            )
            self._pending = (artifact, [name], step)
        except Exception as error:
            self._warn("log_checkpoint", error)

    def _log_pending_checkpoint(self) -> None:
        if not self._pending:
            return
        artifact, names, step = self._pending
        self._pending = None
        artifact.metadata["names"] = names
        self.run.log_artifact(artifact, aliases=[*names, f"step-{step}"])
        self._checkpoints.append((artifact, "best" if "best" in names else names[0], step))
        self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        """Retention: delete the versions checkpoints_to_prune names, once uploaded (online);
        an offline run keeps what it logged, and `wandb sync` uploads all of it."""
        if self.run.offline:
            return
        logged = [(name, step) for _, name, step in self._checkpoints]
        doomed = set(checkpoints_to_prune(logged, self.checkpoint_keep))
        for i in sorted(doomed):
            artifact = self._checkpoints[i][0]
            artifact.wait()  # committed before it can be deleted
            artifact.delete(delete_aliases=True)
        self._checkpoints = [c for i, c in enumerate(self._checkpoints) if i not in doomed]

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(values)
        except Exception as error:
            self._warn("summary", error)

    # ------------------------------------------------------------------ finish
    def finish(self, exit_code: int = 0) -> None:
        """Finish the run (exit_code != 0 marks it failed) and wait until W&B's service has
        written it: run.finish() returns before the service closes the run's .wandb file (a
        reader then found only its header in 4 of 12 tries), so with no other run open the
        service is shut down here (wandb.teardown), which completes the file."""
        if self.run is None:
            return
        try:
            self._log_pending_checkpoint()
        except Exception as error:
            self._warn("log_checkpoint", error)
        run, offline = self.run, self.run.offline
        self.run = None
        try:
            import wandb

            run.finish(exit_code=exit_code)
            if wandb.run is None:  # no other run of this process still needs the service
                wandb.teardown()
        except Exception as error:
            self._warn("finish", error)
            return
        if offline:
            log.info(
                "W&B offline run: %s (read it with `wandb leet %s`, upload it with "
                "`wandb sync %s`)",
                run.dir,
                Path(run.dir).parent,
                Path(run.dir).parent,
            )

"""The data config (`conf/data/*.yaml`) and the error every data problem raises."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gpt_oss.validation import ConfigError, check_fields, ranged

SOURCES = ("hub", "files", "synthetic")
FALLBACKS = ("synthetic", "error")
CHECKSUM_POLICIES = ("auto", "always", "never")


class DataError(ValueError):
    """Bad data input or a damaged cache; the message names the value or file and what is valid."""


class DataConfigError(DataError, ConfigError):
    """A data setting outside its declared range: a DataError and a ConfigError alike."""


@dataclass
class DataConfig:
    """Every data option. The conf/data/*.yaml files set these fields and nothing else."""

    source: str = "hub"  # "hub" | "files" | "synthetic"
    name: str = "tinystories"  # cache sub-folder stem: <cache_dir>/<name>-<fingerprint>/
    # hub source: datasets.load_dataset(hub_path, hub_name)[train_split / val_split][text_field]
    hub_path: str = "roneneldan/TinyStories"
    hub_name: str | None = None
    text_field: str = "text"  # also the field read from .jsonl / .json / .parquet files
    train_split: str = "train"
    val_split: str = "validation"
    # files source
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    # With no val_files, the LAST val_fraction of the train documents (at least one) is held out.
    val_fraction: float = ranged(0.01, "[0, 1)")
    # At most this many training documents (rows, in the source's order); None = all. hub: only
    # the first ones are streamed when the dataset is not in the local cache; files: the first
    # ones left after the val_fraction hold-out (which stays the same whatever the cap);
    # synthetic (and the hub's offline fallback): min(synthetic_train_stories, this).
    max_train_documents: int | None = ranged(None, "[1, inf)")
    # .txt only: None = one document per line; else documents are split on this string
    # ("<|endoftext|>", "\n\n", ...) and stripped of surrounding whitespace.
    separator: str | None = None
    # synthetic source, and the fallback when the hub is unreachable
    synthetic_train_stories: int = ranged(50000, "[1, inf)")
    synthetic_val_stories: int = ranged(1000, "[1, inf)")
    synthetic_seed: int = ranged(0, "[0, 4294967295]")
    # None: $GPT_OSS_DATA_DIR, else <repo root>/data
    cache_dir: str | None = None
    hf_cache_dir: str | None = None  # None: the datasets library's own cache (~/.cache/huggingface)
    num_proc: int = ranged(0, "[0, inf)")  # tokenizer processes; 0 = all cores
    offline_fallback: str = "synthetic"  # "synthetic" | "error" when the hub is unreachable
    verify_checksum: str = "auto"  # "auto" (files <= 2 GiB) | "always" | "never"
    # The model's vocabulary (gpt_oss/model/vocabulary.py): "full" = all 201088 o200k_harmony
    # ids; "compact" = the training split's ids; "auto" (conf/data/*.yaml) = full when the model
    # states vocab_size 201088 (model=full, gpt_oss_120b), else compact; the entry points
    # resolve it against the model before anything is prepared.
    vocabulary: str = "full"
    # compact only: exactly this many ids (the most frequent, padded with unused low-rank ids
    # when the data uses fewer); None = exactly the ids the training split uses
    vocab_size: int | None = ranged(
        None, "[257, 201088]"
    )  # 256 byte tokens + <|endoftext|> at least

    def __post_init__(self) -> None:
        # Hydra hands over ListConfig objects; plain lists keep the config picklable and simple.
        self.train_files = [str(path) for path in self.train_files or []]
        self.val_files = [str(path) for path in self.val_files or []]
        self.validate()

    def train_documents(self, available: int) -> int:
        """How many of `available` training documents are used: all, or the first
        max_train_documents."""
        if self.max_train_documents is None:
            return available
        return min(available, self.max_train_documents)

    def validate(self) -> None:
        """Raise DataError naming the first invalid field (files are checked later, by prepare)."""
        choices = {
            "source": SOURCES,
            "offline_fallback": FALLBACKS,
            "verify_checksum": CHECKSUM_POLICIES,
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise DataError(
                    f"data.{name}={getattr(self, name)!r} is invalid: "
                    f"must be one of {', '.join(valid)}"
                )
        check_fields(self, "data", DataConfigError)
        if not self.name or "/" in self.name:
            raise DataError(f"data.name={self.name!r} is invalid: must be a non-empty folder name")
        if self.separator == "":
            raise DataError(
                "data.separator='' is invalid: use null (one document per line) or a string"
            )
        self._validate_vocabulary()

    def _validate_vocabulary(self) -> None:
        from gpt_oss.model.vocabulary import (
            VOCABULARY_SETTINGS,
            VocabularyError,
            check_vocab_size_setting,
        )

        if self.vocabulary not in VOCABULARY_SETTINGS:
            raise DataError(
                f"data.vocabulary={self.vocabulary!r} is invalid: must be one of "
                f"{', '.join(VOCABULARY_SETTINGS)}"
            )
        if self.vocab_size is not None:
            try:
                check_vocab_size_setting(self.vocab_size)
            except VocabularyError as error:
                raise DataError(str(error)) from error


def default_cache_dir() -> Path:
    """$GPT_OSS_DATA_DIR, else the project's data/ folder (a user cache for non-editable
    installs)."""
    if os.environ.get("GPT_OSS_DATA_DIR"):
        return Path(os.environ["GPT_OSS_DATA_DIR"]).expanduser()
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        return root / "data"
    return Path.home() / ".cache" / "gpt-oss-lab" / "data"


def resolve_cache_dir(config: DataConfig) -> Path:
    """Where prepared token files go: data.cache_dir, else default_cache_dir()."""
    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()

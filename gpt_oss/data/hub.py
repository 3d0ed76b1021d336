"""The Hugging Face hub: a reachability probe, a cache-only load with hub access switched off,
the online load (streamed, only the first train documents, with data.max_train_documents), and
the message of the offline fallback.

The order is (1) our prepared token files (see prepare), (2) the local Hugging Face datasets
cache, (3) the hub itself when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are unset and a 3 s probe
reaches it, (4) otherwise the fallback that prepare applies.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from gpt_oss.data.config import DataConfig, DataError
from gpt_oss.data.sources import ArrowDocuments, Documents, check_text_column

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0


def _env_offline() -> str | None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{name}={os.environ[name]} is set"
    return None


def _hub_address() -> tuple[str, int]:
    """Where a connection to the hub goes first: the HTTPS proxy if one is set, else the
    endpoint."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_unreachable_reason(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers a TCP connect within timeout_s; else why not (offline env var,
    DNS failure, refused, timeout). Runs in a thread because DNS lookups ignore socket timeouts."""
    if reason := _env_offline():
        return reason
    host, port = _hub_address()
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{host}:{port} is unreachable ({error})")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {timeout_s:g} s"


@contextmanager
def _hub_access_off() -> Iterator[None]:
    """datasets and huggingface_hub read HF_HUB_OFFLINE once, at import; flip their flags for a
    cache-only load, and restore them after."""
    import datasets
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def load_hub_dataset(config: DataConfig) -> tuple[Any | None, str]:
    """(DatasetDict, how it was found) or (None, why the hub dataset is unavailable).

    With data.max_train_documents set and no copy in the local cache, the hub step streams the
    first max_train_documents of the train split and the whole validation split into memory, so
    only the files (or parquet row groups) holding them are downloaded, never the whole dataset.
    Raises DataError for a dataset or split that does not exist."""
    import datasets

    arguments = {"path": config.hub_path, "name": config.hub_name, "cache_dir": config.hf_cache_dir}
    cache = config.hf_cache_dir or datasets.config.HF_DATASETS_CACHE
    try:
        with _hub_access_off():
            return datasets.load_dataset(**arguments), f"local Hugging Face cache ({cache})"
    except (ConnectionError, FileNotFoundError, ValueError) as error:
        log.info("%s is not in the Hugging Face cache %s: %s", config.hub_path, cache, error)
    if reason := hub_unreachable_reason():
        return None, f"{reason}, and no copy is in the Hugging Face cache ({cache})"
    try:
        if (count := config.max_train_documents) is not None:
            found = f"the Hugging Face hub (streamed: the first {count:,} train documents)"
            return _stream_slice(config, arguments), found
        return datasets.load_dataset(**arguments), "the Hugging Face hub"
    except datasets.exceptions.DatasetNotFoundError as error:  # a typo must not fall back
        raise DataError(f"data.hub_path={config.hub_path!r}: {error}") from error
    except ConnectionError as error:  # reachable a moment ago, but the download failed
        return None, f"the hub could not be reached: {error}"


def _stream_slice(config: DataConfig, arguments: dict[str, Any]) -> Any:
    """A DatasetDict in memory: the first max_train_documents of the train split and the whole
    validation split (TinyStories': ~22k stories, ~19 MB), read with streaming=True."""
    import datasets

    streams = datasets.load_dataset(**arguments, streaming=True)  # resolves files, reads none
    _check_splits(streams, config)
    count = config.max_train_documents
    log.info("streaming the first %s train documents of %s", f"{count:,}", config.hub_path)
    train = _materialise(streams[config.train_split].take(count), config.train_split, config, count)
    log.info("streaming the %r split of %s", config.val_split, config.hub_path)
    val = _materialise(streams[config.val_split], config.val_split, config, None)
    return datasets.DatasetDict({config.train_split: train, config.val_split: val})


def _materialise(stream: Any, split: str, config: DataConfig, total: int | None) -> Any:
    """The text column of a streamed split as an in-memory `datasets.Dataset` (so the rest of
    preparation reads it like a cached one); DataError for a row without text."""
    import datasets

    where, texts = f"{config.hub_path}[{split!r}]", []
    bar = datasets.tqdm(stream, total=total, unit="doc", desc=f"streaming {where}")
    for row in bar:
        if config.text_field not in row:
            raise DataError(
                f"{where} row {len(texts)}: no text field {config.text_field!r} "
                f"(data.text_field); its fields are {list(row)}"
            )
        text = row[config.text_field]
        if not (text is None or isinstance(text, str)):
            raise DataError(
                f"{where} row {len(texts)}: field {config.text_field!r} holds "
                f"{type(text).__name__} {text!r:.40}, not text"
            )
        texts.append(text)
    features = datasets.Features({config.text_field: datasets.Value("string")})
    return datasets.Dataset.from_dict({config.text_field: texts}, features=features)


def _check_splits(dataset: Any, config: DataConfig) -> None:
    """DataError when the (streamed or loaded) dataset lacks the train or val split."""
    for split, name in (("train", config.train_split), ("val", config.val_split)):
        if name not in dataset:
            raise DataError(
                f"{config.hub_path} has no split {name!r} (data.{split}_split); "
                f"it has {list(dataset)}"
            )


def hub_documents(dataset: Any, config: DataConfig) -> dict[str, Documents]:
    """The train and val documents of a loaded DatasetDict, the train split cut to its first
    data.max_train_documents; DataError for a missing split or field."""
    _check_splits(dataset, config)
    documents = {}
    for split, name in (("train", config.train_split), ("val", config.val_split)):
        where = f"{config.hub_path}[{name!r}]"
        table = check_text_column(dataset[name], config.text_field, where)
        if split == "train" and (count := config.train_documents(len(table))) < len(table):
            log.info(
                "taking the first %s of the %s train documents of %s",
                f"{count:,}",
                f"{len(table):,}",
                config.hub_path,
            )
            table = table.select(range(count))  # contiguous: a view, nothing copied
        documents[split] = ArrowDocuments(table, config.text_field)
    return documents


def fallback_message(config: DataConfig, reason: str) -> str:
    """The loud warning logged when the synthetic corpus replaces an unavailable hub dataset."""
    rule = "=" * 88
    return "\n".join(
        [
            rule,
            f"DATA FALLBACK: {config.hub_path} is not available: {reason}.",
            "Using the SYNTHETIC story corpus instead "
            f"({config.train_documents(config.synthetic_train_stories)} train / "
            f"{config.synthetic_val_stories} val stories, seed {config.synthetic_seed}).",
            "Results are NOT comparable with TinyStories runs; "
            "the run's config records this fallback.",
            "  real text offline:  data=text data.train_files=[train.jsonl] "
            "data.val_files=[val.jsonl]",
            "  synthetic on purpose (no warning):  data=synthetic",
            "  fail instead of falling back:  data.offline_fallback=error",
            rule,
        ]
    )

"""Prepared data in a compact vocabulary: the o200k token files re-expressed in the vocabulary
their training split needs (gpt_oss.vocabulary), cached beside them.

`<directory>/compact-<size | all>/<split>.bin` holds the split's compact ids (uint32, the same
layout: <|endoftext|> before every document) and `<split>.json` the usual token metadata plus
the vocabulary itself (its o200k id list and sha256) and the sha256 of the o200k split it was
mapped from. Each split carries the map, because compact ids mean nothing without it; both
splits must carry the same one. UTF-8 byte counts are the o200k split's: a token spelled by its
bytes adds tokens, never bytes, so bits per byte keep their meaning across vocabularies.

The map is built from the training split only (validation text never chooses the vocabulary).
A stale folder (the o200k split changed) is prepared again; a damaged one (size, sha256 or map
checksum disagrees) is a DataError naming the file, as for the o200k files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gpt_oss.data import (
    FORMAT,
    SPLITS,
    TOKEN_DTYPE,
    DataError,
    PreparedData,
    TokenFile,
    _atomic_write_text,
    _exclusive,
    _fsync_directory,
    read_metadata,
)
from gpt_oss.tokenizer import ENCODING_NAME
from gpt_oss.vocabulary import (
    CompactVocabulary,
    Vocabulary,
    VocabularyError,
    count_tokens,
    vocabulary_from_dict,
)

log = logging.getLogger(__name__)

MAP_CHUNK_TOKENS = 1 << 22  # o200k tokens mapped per step: ~50 MB of temporaries


def compact_directory(prepared: PreparedData, size: int | None) -> Path:
    """Where the compact splits of `prepared` for data.vocab_size=size live."""
    return prepared.directory / f"compact-{size if size is not None else 'all'}"


def compact_prepared(
    prepared: PreparedData, size: int | None, verify_checksum: str = "auto"
) -> PreparedData:
    """`prepared` with its splits in the compact vocabulary of its training split (size ids,
    or exactly the ids it uses for None), building and caching them when needed."""
    directory = compact_directory(prepared, size)
    if files := _open_compact(directory, prepared, verify_checksum):
        return _with_vocabulary(prepared, files)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory):
        if files := _open_compact(directory, prepared, verify_checksum):  # another process did
            return _with_vocabulary(prepared, files)
        start = time.perf_counter()
        vocabulary = CompactVocabulary.from_counts(count_tokens(prepared.train.tokens), size)
        files = {
            split: _write_compact(directory, split, getattr(prepared, split), vocabulary)
            for split in SPLITS
        }
        log.info(
            "compact vocabulary of %d ids from %s in %.1f s -> %s",
            vocabulary.size,
            prepared.train.path,
            time.perf_counter() - start,
            directory,
        )
    return _with_vocabulary(prepared, files)


def _with_vocabulary(prepared: PreparedData, files: dict[str, TokenFile]) -> PreparedData:
    vocabulary = file_vocabulary(files["train"])
    if file_vocabulary(files["val"]) != vocabulary:
        raise DataError(
            f"{files['val'].path} and {files['train'].path} carry different vocabularies: "
            f"delete {files['train'].path.parent} to prepare again"
        )
    return dataclasses.replace(
        prepared, train=files["train"], val=files["val"], vocabulary=vocabulary
    )


def file_vocabulary(file: TokenFile) -> Vocabulary:
    """The vocabulary a token file's ids are in (the full one for o200k files); DataError
    naming the file when its stored map is damaged."""
    try:
        vocabulary = vocabulary_from_dict(file.metadata.get("vocabulary"))
    except VocabularyError as error:
        raise DataError(
            f"{file.path.with_suffix('.json')}: {error}. Delete {file.path.parent} to prepare again."
        ) from error
    if vocabulary.size != file.metadata.get("vocab_size"):
        raise DataError(
            f"{file.path.with_suffix('.json')} says vocab_size={file.metadata.get('vocab_size')} "
            f"but its vocabulary has {vocabulary.size} ids. Delete {file.path.parent} to prepare again."
        )
    return vocabulary


def _open_compact(
    directory: Path, prepared: PreparedData, verify_checksum: str
) -> dict[str, TokenFile] | None:
    """Both compact splits when prepared from the current o200k splits, else None."""
    files = {}
    for split in SPLITS:
        bin_path = directory / f"{split}.bin"
        metadata = read_metadata(bin_path)
        source = getattr(prepared, split)
        if metadata is None:
            return None
        if metadata.get("o200k_sha256") != source.metadata["sha256"]:
            log.info("%s was mapped from another %s split: preparing it again", bin_path, split)
            return None
        files[split] = TokenFile.open(bin_path, verify_checksum)
    return files


def _write_compact(
    directory: Path, split: str, source: TokenFile, vocabulary: CompactVocabulary
) -> TokenFile:
    """Map one o200k split to compact ids, chunk by chunk, into directory/<split>.bin
    atomically, then write its metadata (last, as for the o200k files)."""
    bin_path = directory / f"{split}.bin"
    bin_path.with_suffix(".json").unlink(missing_ok=True)  # stale metadata must not outlive it
    tmp = directory / f".{split}.bin.{os.getpid()}.tmp"
    digest, num_tokens, spelled, start = hashlib.sha256(), 0, 0, time.perf_counter()
    try:
        with open(tmp, "wb") as handle:
            for first in range(0, len(source), MAP_CHUNK_TOKENS):
                chunk = np.asarray(source.tokens[first : first + MAP_CHUNK_TOKENS])
                ids = vocabulary.from_o200k(chunk).astype(TOKEN_DTYPE, copy=False)
                handle.write(memoryview(ids).cast("B"))
                digest.update(ids)
                num_tokens += len(ids)
                spelled += int((~vocabulary.contains(chunk)).sum())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, bin_path)
    finally:
        tmp.unlink(missing_ok=True)
    metadata = _compact_metadata(split, source, vocabulary, num_tokens, digest.hexdigest())
    metadata |= {"spelled_o200k_tokens": spelled, "seconds": round(time.perf_counter() - start, 3)}
    _atomic_write_text(bin_path.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")
    _fsync_directory(directory)
    return TokenFile.open(bin_path, verify_checksum="never")  # just computed


def _compact_metadata(
    split: str, source: TokenFile, vocabulary: CompactVocabulary, num_tokens: int, sha256: str
) -> dict[str, Any]:
    meta = source.metadata
    return {
        "format": FORMAT,
        "split": split,
        "tokenizer": ENCODING_NAME,
        "vocab_size": vocabulary.size,
        "vocabulary": vocabulary.to_dict(),
        "dtype": TOKEN_DTYPE.str,
        "layout": f"<|endoftext|> (compact id {vocabulary.endoftext_id}) before every document",
        "source": meta["source"],
        "source_fingerprint": meta["source_fingerprint"],
        "o200k_sha256": meta["sha256"],  # the o200k split these ids were mapped from
        "o200k_num_tokens": len(source),
        "num_tokens": num_tokens,
        "num_documents": source.num_documents,
        "num_bytes": source.num_bytes,  # the text's UTF-8 bytes: unchanged by the vocabulary
        "sha256": sha256,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

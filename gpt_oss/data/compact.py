"""Prepared data in a compact vocabulary: the o200k token files re-expressed in the vocabulary
their training split needs (gpt_oss.model.vocabulary), cached beside them.

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

import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gpt_oss.data.config import DataError
from gpt_oss.data.tokens import (
    FORMAT,
    TOKEN_DTYPE,
    TokenFile,
    fsync_directory,
    read_metadata,
    write_metadata,
)
from gpt_oss.files import remove_stale_temporaries, temporary_path
from gpt_oss.model.tokenizer import ENCODING_NAME
from gpt_oss.model.vocabulary import (
    CompactVocabulary,
    Vocabulary,
    VocabularyError,
    count_tokens,
    vocabulary_from_dict,
)

log = logging.getLogger(__name__)

MAP_CHUNK_TOKENS = 1 << 22  # o200k tokens mapped per step: ~50 MB of temporaries


def compact_directory(directory: Path, size: int | None) -> Path:
    """Where the compact splits of the o200k splits in `directory` for data.vocab_size=size live."""
    return directory / f"compact-{size if size is not None else 'all'}"


def open_compact(
    directory: Path, sources: dict[str, TokenFile], verify_checksum: str = "auto"
) -> dict[str, TokenFile] | None:
    """The compact splits in `directory` when they were mapped from these o200k `sources`
    ({split: TokenFile}) and carry one vocabulary, else None; DataError when damaged."""
    files = {}
    for split, source in sources.items():
        bin_path = directory / f"{split}.bin"
        metadata = read_metadata(bin_path)
        if metadata is None:
            return None
        if metadata.get("o200k_sha256") != source.metadata["sha256"]:
            log.info("%s was mapped from another %s split: preparing it again", bin_path, split)
            return None
        if "metadata_sha256" not in metadata:
            log.info("%s was written by an older version: preparing it again", bin_path)
            return None
        files[split] = TokenFile.open(bin_path, verify_checksum)
    split_vocabularies = {split: file_vocabulary(file) for split, file in files.items()}
    if len(set(split_vocabularies.values())) > 1:
        raise DataError(
            f"the splits in {directory} carry different vocabularies: delete it to prepare again"
        )
    return files


def write_compact(
    directory: Path, sources: dict[str, TokenFile], size: int | None
) -> dict[str, TokenFile]:
    """Build the compact vocabulary from sources["train"] (size ids, or exactly the ids it uses
    for None) and write every split in it to `directory` (the caller holds its lock).
    Temporaries of killed mappings there are removed first."""
    start = time.perf_counter()
    for stale in remove_stale_temporaries(directory):
        log.info("removed %s, left by a mapping that was killed", stale)
    try:
        vocabulary = CompactVocabulary.from_counts(count_tokens(sources["train"].tokens), size)
    except VocabularyError as error:
        raise DataError(str(error)) from error
    files = {
        split: _write_split(directory, split, source, vocabulary)
        for split, source in sources.items()
    }
    log.info(
        "compact vocabulary of %d ids from %s in %.1f s -> %s",
        vocabulary.size,
        sources["train"].path,
        time.perf_counter() - start,
        directory,
    )
    return files


def file_vocabulary(file: TokenFile) -> Vocabulary:
    """The vocabulary a token file's ids are in (the full one for o200k files); DataError
    naming the file when its stored map is damaged."""
    try:
        vocabulary = vocabulary_from_dict(file.metadata.get("vocabulary"))
    except VocabularyError as error:
        raise DataError(
            f"{file.path.with_suffix('.json')}: {error}. "
            f"Delete {file.path.parent} to prepare again."
        ) from error
    if vocabulary.size != file.metadata.get("vocab_size"):
        raise DataError(
            f"{file.path.with_suffix('.json')} says vocab_size={file.metadata.get('vocab_size')} "
            f"but its vocabulary has {vocabulary.size} ids. "
            f"Delete {file.path.parent} to prepare again."
        )
    return vocabulary


def _write_split(
    directory: Path, split: str, source: TokenFile, vocabulary: CompactVocabulary
) -> TokenFile:
    """Map one o200k split to compact ids, chunk by chunk, into directory/<split>.bin
    atomically, then write its metadata (last, as for the o200k files)."""
    bin_path = directory / f"{split}.bin"
    bin_path.with_suffix(".json").unlink(missing_ok=True)  # stale metadata must not outlive it
    tmp = temporary_path(bin_path)
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
    metadata = _metadata(split, source, vocabulary, num_tokens, digest.hexdigest())
    metadata |= {"spelled_o200k_tokens": spelled, "seconds": round(time.perf_counter() - start, 3)}
    write_metadata(bin_path, metadata)
    fsync_directory(directory)
    return TokenFile.open(bin_path, verify_checksum="never")  # just computed


def _metadata(
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

"""Document sources: a length and texts(start, stop), picklable, so worker processes read their
own ranges (from memory-mapped Arrow, or by generating stories) instead of being sent text.
Local files (.txt / .jsonl / .json / .parquet) are read through `datasets`; the synthetic corpus
is generated; with no validation files, the last documents are held out.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gpt_oss.data.config import DataConfig, DataError
from gpt_oss.data.synthetic import generate_stories
from gpt_oss.files import utf8_error, utf8_message

FILE_KINDS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


class Documents(Protocol):
    """A sequence of documents read by index range (texts may be None or empty: skipped)."""

    def __len__(self) -> int: ...

    def texts(self, start: int, stop: int) -> list[str | None]: ...


@dataclass
class ArrowDocuments:
    """One text column of a memory-mapped `datasets.Dataset`."""

    dataset: Any  # datasets.Dataset, memory-mapped
    text_field: str

    def __len__(self) -> int:
        return len(self.dataset)

    def texts(self, start: int, stop: int) -> list[str | None]:
        return self.dataset[start:stop][self.text_field]


@dataclass
class ListDocuments:
    """Documents held in memory (a .txt file split on data.separator)."""

    documents: list[str]

    def __len__(self) -> int:
        return len(self.documents)

    def texts(self, start: int, stop: int) -> list[str | None]:
        return self.documents[start:stop]


@dataclass
class SyntheticDocuments:
    """`count` generated stories of one stream ("train" or "val"), made on demand."""

    count: int
    seed: int
    stream: str

    def __len__(self) -> int:
        return self.count

    def texts(self, start: int, stop: int) -> list[str | None]:
        return generate_stories(stop - start, self.seed, start=start, stream=self.stream)


class ConcatDocuments:
    """Several sources read as one, in order (one per input file)."""

    def __init__(self, parts: Sequence[Documents]) -> None:
        self.parts = list(parts)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def texts(self, start: int, stop: int) -> list[str | None]:
        texts: list[str | None] = []
        part = bisect.bisect_right(self.offsets, start) - 1
        while start < stop:
            part_stop = min(stop, self.offsets[part + 1])
            texts += self.parts[part].texts(
                start - self.offsets[part], part_stop - self.offsets[part]
            )
            start, part = part_stop, part + 1
        return texts


@dataclass
class SliceDocuments:
    """Documents [start, stop) of another source (the held-out split)."""

    documents: Documents
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def texts(self, start: int, stop: int) -> list[str | None]:
        return self.documents.texts(self.start + start, self.start + stop)


def first_documents(documents: Documents, count: int) -> Documents:
    """Documents [0, count) of `documents`; `documents` itself when count covers them all."""
    return documents if count >= len(documents) else SliceDocuments(documents, 0, count)


# ----------------------------------------------------------------------------------------------
# Local files


def _peek_fields(path: Path, kind: str) -> list[str] | None:
    """Field names of the first record, read cheaply; None when that cannot be done cheaply."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as error:  # pyarrow raises several types for a non-parquet file
            raise DataError(f"{path} is not a readable parquet file: {error}") from error
    if kind == "json":
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline(1 << 20).strip()
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            return None  # a pretty-printed or array .json: the datasets reader decides
        return list(record) if isinstance(record, dict) else None
    return None


def check_file(path_text: str, option: str, text_field: str) -> Path:
    """A readable input file with a known extension and the text field; DataError otherwise."""
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"data.{option}: {path_text} does not exist (resolved to {path})")
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"data.{option}: {path_text} has an unsupported extension {path.suffix!r}; "
            f"valid: {', '.join(FILE_KINDS)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"data.{option}: {path_text} is empty")
    names = _peek_fields(path, kind)
    if names is not None and text_field not in names:
        raise DataError(
            f"data.{option}: {path_text} has no field {text_field!r} (data.text_field); "
            f"its fields are {names}"
        )
    return path


def file_identity(path: Path) -> list[Any]:
    """[path, size, mtime]: what the cache fingerprint records of an input file."""
    # Path, size and mtime (as make does): hashing multi-GB inputs at every start would be slow.
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def load_file(path: Path, config: DataConfig, hf_cache: Path) -> Documents:
    """One input file through `datasets`; a text or JSON file that is not UTF-8 is a DataError
    naming the file and the first bad byte's offset (datasets' errors name neither, and for
    JSON come only when the text is read). Checked only when preparing."""
    if FILE_KINDS[path.suffix.lower()] != "parquet" and (where := utf8_error(path)):
        raise DataError(utf8_message(path, where))
    return _load_with_datasets(path, config, hf_cache)


def _load_with_datasets(path: Path, config: DataConfig, hf_cache: Path) -> Documents:
    """One input file through `datasets` (text / json / parquet builders)."""
    import datasets

    kind = FILE_KINDS[path.suffix.lower()]
    if kind == "text" and config.separator is not None:
        # The whole file as one record, split on the separator: memory ~2x the file size.
        dataset = datasets.load_dataset(
            "text",
            data_files=str(path),
            split="train",
            cache_dir=str(hf_cache),
            sample_by="document",
            keep_linebreaks=True,
        )
        text = "".join(dataset["text"])
        documents = (doc.strip() for doc in text.split(config.separator))
        return ListDocuments([doc for doc in documents if doc])  # a trailing separator is no story
    if kind == "text":
        dataset = datasets.load_dataset(
            "text", data_files=str(path), split="train", cache_dir=str(hf_cache)
        )
        return ArrowDocuments(dataset, "text")
    dataset = datasets.load_dataset(
        kind, data_files=str(path), split="train", cache_dir=str(hf_cache)
    )
    return ArrowDocuments(
        check_text_column(dataset, config.text_field, str(path)), config.text_field
    )


def check_text_column(dataset: Any, text_field: str, where: str) -> Any:
    """`dataset` itself when it has a text column `text_field`; DataError naming `where` else."""
    feature = dataset.features.get(text_field)
    if feature is None:
        raise DataError(
            f"{where} has no field {text_field!r} (data.text_field); "
            f"its fields are {list(dataset.features)}"
        )
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise DataError(f"{where}: field {text_field!r} holds {feature}, not text")
    return dataset


def hold_out(documents: Documents, fraction: float, files: list[str]) -> dict[str, Documents]:
    """The last `fraction` of the documents (at least one) become the validation split."""
    if fraction <= 0:
        raise DataError(
            "data.val_files is empty and data.val_fraction=0: "
            "give validation files or a fraction > 0"
        )
    held = max(1, round(len(documents) * fraction))
    if len(documents) - held < 1:
        raise DataError(
            f"{files} hold {len(documents)} document(s): too few to hold out validation"
        )
    return {
        "train": SliceDocuments(documents, 0, len(documents) - held),
        "val": SliceDocuments(documents, len(documents) - held, len(documents)),
    }

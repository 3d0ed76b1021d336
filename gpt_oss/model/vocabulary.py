"""The model's vocabulary: all of o200k_harmony, or a compact subset built from training data.

Text is always tokenized by o200k_harmony (same token boundaries); a vocabulary then maps the
o200k ids to the ids the model's embedding and head cover. `FullVocabulary` is the identity
(201,088 ids). `CompactVocabulary` keeps the ids a training split uses (or its most frequent
ones), all 256 single-byte tokens and the special tokens the data uses: TinyStories needs ~8.1k
of the 201k ids, and a small model would otherwise spend almost all of its parameters on rows
that never see a gradient (the TinyStories paper likewise kept GPT-Neo's 10k most frequent).

An o200k token outside a compact vocabulary is written as the compact ids of its UTF-8 bytes,
so every text stays representable and decodes back byte for byte. Special tokens cannot be
spelled that way (their bytes are the literal text "<|start|>", a different thing), so a special
token outside the vocabulary is an error, never a silent change of meaning.

Compact ids are the kept o200k ids in ascending order. A vocabulary serialises to plain JSON
data (`to_dict`) carrying a sha256 of its id list that `vocabulary_from_dict` verifies.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gpt_oss.model.config import ConfigError
from gpt_oss.model.tokenizer import (
    ENCODING_NAME,
    ENDOFTEXT,
    ENDOFTEXT_ID,
    VOCAB_SIZE,
    get_tokenizer,
)

__all__ = [
    "VOCABULARIES",
    "VOCABULARY_SETTINGS",
    "CompactVocabulary",
    "FullVocabulary",
    "Vocabulary",
    "VocabularyError",
    "byte_token_ids",
    "check_vocab_size_setting",
    "count_tokens",
    "follow_data",
    "planned_size",
    "resolve_vocabulary",
    "special_token_ids",
    "vocabulary_from_dict",
]

FORMAT = "gpt-oss-lab/vocabulary/1"
VOCABULARIES = ("compact", "full")
# data.vocabulary; auto = full when the model states o200k's 201088 (model=full, gpt_oss_120b),
# else compact
VOCABULARY_SETTINGS = ("auto", *VOCABULARIES)
MIN_COMPACT_SIZE = 257  # the 256 byte tokens and <|endoftext|>
COUNT_CHUNK_TOKENS = 1 << 24  # bincount a memory-mapped split 64 MB at a time


class VocabularyError(ValueError):
    """A token or id a vocabulary cannot represent, or a damaged serialised vocabulary."""


@functools.cache
def byte_token_ids() -> np.ndarray:
    """(256,) int64: the o200k id of each single byte 0..255 (o200k has a token for every byte)."""
    encoding = get_tokenizer()
    return np.array([encoding.encode_single_token(bytes([b])) for b in range(256)], dtype=np.int64)


@functools.cache
def special_token_ids() -> frozenset[int]:
    """The o200k_harmony ids of special tokens (<|endoftext|>, <|start|>, reserved ones, ...)."""
    encoding = get_tokenizer()
    return frozenset(encoding.encode_single_token(name) for name in encoding.special_tokens_set)


def count_tokens(tokens: np.ndarray, chunk_tokens: int = COUNT_CHUNK_TOKENS) -> np.ndarray:
    """(VOCAB_SIZE,) int64 occurrences of each o200k id in a flat token array (a memmap is read
    chunk by chunk, so memory stays flat for multi-GB splits)."""
    counts = np.zeros(VOCAB_SIZE, dtype=np.int64)
    for start in range(0, len(tokens), chunk_tokens):
        chunk = np.asarray(tokens[start : start + chunk_tokens])
        if len(chunk) and int(chunk.max()) >= VOCAB_SIZE:
            raise VocabularyError(
                f"token id {int(chunk.max())} is outside o200k_harmony [0, {VOCAB_SIZE})"
            )
        counts += np.bincount(chunk, minlength=VOCAB_SIZE)
    return counts


def check_vocab_size_setting(size: Any, specials_used: int = 1) -> None:
    """VocabularyError unless data.vocab_size is an int that fits the byte tokens and the
    special tokens the data uses (at least <|endoftext|>) and o200k's 201088 ids."""
    least = 256 + specials_used
    if not isinstance(size, int) or isinstance(size, bool) or not least <= size <= VOCAB_SIZE:
        raise VocabularyError(
            f"data.vocab_size={size!r} is invalid: a compact vocabulary needs at least {least} "
            f"ids (the 256 byte tokens and the {specials_used} special token(s) the data uses) "
            f"and at most {VOCAB_SIZE}; null keeps exactly the ids the training split uses"
        )


def resolve_vocabulary(setting: str, model_vocab_size: int | None) -> str:
    """data.vocabulary -> "compact" | "full": auto is full when the model states o200k's
    201088 ids (model=full, gpt_oss_120b, release weights) and compact otherwise."""
    if setting not in VOCABULARY_SETTINGS:
        raise VocabularyError(
            f"data.vocabulary={setting!r} is invalid: "
            f"must be one of {', '.join(VOCABULARY_SETTINGS)}"
        )
    if setting != "auto":
        return setting
    return "full" if model_vocab_size == VOCAB_SIZE else "compact"


def planned_size(vocabulary: str, vocab_size: int | None) -> int | None:
    """The vocab_size a (resolved) vocabulary setting gives a model: 201088 for full,
    data.vocab_size for compact; None when it is only known once the training split is counted."""
    return VOCAB_SIZE if vocabulary == "full" else vocab_size


def follow_data(model_vocab_size: int | None, data_size: int | None, setting: str) -> int | None:
    """model.vocab_size given the data's vocabulary size (None: not known yet): null follows
    the data; a stated size must equal it. ConfigError naming both values and the fix.
    setting: how the data's vocabulary was chosen, for the message."""
    if model_vocab_size is None:
        return data_size
    if data_size is not None and model_vocab_size != data_size:
        raise ConfigError(
            f"model.vocab_size={model_vocab_size} disagrees with the data's vocabulary of "
            f"{data_size} ids ({setting}): leave model.vocab_size null to follow the data, or "
            f"choose the data's vocabulary to match (data.vocabulary=full for 201088, "
            f"data.vocab_size=N for a compact one)"
        )
    return model_vocab_size


def _as_ids(ids: Sequence[int] | np.ndarray, size: int, what: str) -> np.ndarray:
    """ids as a flat int64 array, each checked to lie in [0, size)."""
    array = np.asarray(ids, dtype=np.int64).reshape(-1)
    bad = array[(array < 0) | (array >= size)]
    if len(bad):
        raise VocabularyError(f"{what} ids {bad[:5].tolist()} are outside [0, {size})")
    return array


class Vocabulary:
    """o200k_harmony as the model sees it; this base class is the identity (FullVocabulary).

    Shapes: `from_o200k` takes any number of o200k ids and returns as many or more model ids
    (byte fallback); `to_o200k` returns exactly one o200k id per model id.
    """

    kind = "full"

    @property
    def size(self) -> int:
        """The model's vocab_size: rows of its embedding and head."""
        return VOCAB_SIZE

    @property
    def endoftext_id(self) -> int:
        """The model id of <|endoftext|> (document separator and start of a story)."""
        return ENDOFTEXT_ID

    def from_o200k(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """o200k ids -> model ids (uint32); VocabularyError for an id outside o200k."""
        return _as_ids(ids, VOCAB_SIZE, "o200k").astype(np.uint32)

    def to_o200k(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Model ids -> o200k ids (int64); VocabularyError for an id outside this vocabulary."""
        return _as_ids(ids, self.size, "model")

    def encode(self, text: str, allowed_special: str | set[str] = frozenset()) -> list[int]:
        """Model ids of text. By default special-token text is ordinary text (as in the data);
        allowed_special="all" reads e.g. "<|endoftext|>" in a prompt as the special token."""
        o200k = get_tokenizer().encode(text, allowed_special=allowed_special, disallowed_special=())
        return self.from_o200k(o200k).tolist()

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact UTF-8 bytes model ids stand for (may end mid-character)."""
        return get_tokenizer().decode_bytes(self.to_o200k(list(ids)).tolist())

    def decode(self, ids: Iterable[int]) -> str:
        """Text of model ids; invalid UTF-8 (a cut character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one model id (tiktoken's name: lets a vocabulary stand in for it)."""
        return self.decode_bytes([token])

    def token_id(self, text: str) -> int:
        """The model id of a single token given by its text (special tokens included);
        VocabularyError when the text is not one o200k token or this vocabulary lacks it."""
        try:
            o200k = get_tokenizer().encode_single_token(text)
        except KeyError as error:
            raise VocabularyError(
                f"{text!r} is not a single token of {ENCODING_NAME}; give its id"
            ) from error
        if not self.contains([o200k])[0]:
            raise VocabularyError(
                f"{text!r} (o200k id {o200k}) is not in this {self.size}-token {self.kind} "
                "vocabulary: its training data never used it"
            )
        return int(self.from_o200k([o200k])[0])

    def contains(self, o200k_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(N,) bool: which o200k ids have a model id of their own (the rest are spelled)."""
        return np.ones(len(_as_ids(o200k_ids, VOCAB_SIZE, "o200k")), dtype=bool)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; `vocabulary_from_dict` reads it back."""
        return {
            "format": FORMAT,
            "kind": self.kind,
            "tokenizer": ENCODING_NAME,
            "vocab_size": self.size,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class FullVocabulary(Vocabulary):
    """All of o200k_harmony: model ids are o200k ids (release weights, model=full, 120b)."""


class CompactVocabulary(Vocabulary):
    """A subset of o200k_harmony that always holds the 256 byte tokens and <|endoftext|>.

    o200k_ids: (V,) the kept o200k ids, strictly ascending; compact id i stands for o200k_ids[i].
    """

    kind = "compact"

    def __init__(self, o200k_ids: Sequence[int] | np.ndarray) -> None:
        ids = _as_ids(o200k_ids, VOCAB_SIZE, "o200k")
        if len(ids) and not bool((np.diff(ids) > 0).all()):
            raise VocabularyError("a compact vocabulary's o200k ids must be strictly ascending")
        missing = sorted(set(byte_token_ids().tolist()) - set(ids.tolist()))
        if missing:
            raise VocabularyError(
                f"a compact vocabulary must hold all 256 single-byte tokens; "
                f"o200k ids {missing[:5]} "
                f"({len(missing)} in all) are missing"
            )
        if ENDOFTEXT_ID not in set(ids.tolist()):
            raise VocabularyError(f"a compact vocabulary must hold {ENDOFTEXT} ({ENDOFTEXT_ID})")
        self.o200k_ids = ids
        self.o200k_ids.setflags(write=False)
        self._lookup = np.full(VOCAB_SIZE, -1, dtype=np.int64)  # o200k id -> compact id, or -1
        self._lookup[ids] = np.arange(len(ids))
        self._bytes = self._lookup[byte_token_ids()]  # (256,) compact id of each byte

    @classmethod
    def from_counts(cls, counts: np.ndarray, size: int | None = None) -> CompactVocabulary:
        """The vocabulary a training split with these token counts gets.

        counts: (VOCAB_SIZE,) occurrences per o200k id, e.g. from `count_tokens`. size None:
        every id with a count > 0, plus all byte tokens and <|endoftext|>. size N: exactly N
        ids: the byte tokens, the special tokens used, then the most frequent ids (ties to the
        lower id); when the data uses fewer, the rest are the lowest-ranked (most common in
        o200k's own corpus) ordinary ids it did not use, so the model's vocab_size is N exactly
        (padding, as nanoGPT pads 50257 to 50304; those rows are simply never trained).
        """
        counts = np.asarray(counts)
        if counts.shape != (VOCAB_SIZE,):
            raise VocabularyError(f"counts must have shape ({VOCAB_SIZE},), got {counts.shape}")
        used = np.flatnonzero(counts > 0)
        specials = [i for i in special_token_ids() if counts[i] > 0 or i == ENDOFTEXT_ID]
        required = np.union1d(byte_token_ids(), specials)
        candidates = np.setdiff1d(used, required)
        if size is None:
            return cls(np.union1d(required, candidates))
        check_vocab_size_setting(size, len(required) - 256)
        free = size - len(required)
        if len(candidates) >= free:
            # most frequent first; lexsort's last key is primary, so ties go to the lower id
            order = np.lexsort((candidates, -counts[candidates]))
            return cls(np.union1d(required, candidates[order[:free]]))
        padding = np.setdiff1d(np.arange(VOCAB_SIZE), np.union1d(required, candidates))
        padding = np.setdiff1d(padding, list(special_token_ids()))[: free - len(candidates)]
        return cls(np.union1d(np.union1d(required, candidates), padding))

    @property
    def size(self) -> int:
        return len(self.o200k_ids)

    @property
    def endoftext_id(self) -> int:
        return int(self._lookup[ENDOFTEXT_ID])

    def contains(self, o200k_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(N,) bool: which o200k ids have a compact id of their own (the rest are spelled)."""
        return self._lookup[_as_ids(o200k_ids, VOCAB_SIZE, "o200k")] >= 0

    def from_o200k(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """o200k ids (N,) -> compact ids (M >= N,) uint32: an id outside the vocabulary becomes
        the compact ids of its bytes; VocabularyError for a special token outside it."""
        ids = _as_ids(ids, VOCAB_SIZE, "o200k")
        mapped = self._lookup[ids]
        missing = mapped < 0
        if not missing.any():
            return mapped.astype(np.uint32)
        unique, which = np.unique(ids[missing], return_inverse=True)
        spellings = [self._spell(int(token)) for token in unique]
        lengths = np.ones(len(ids), dtype=np.int64)
        spell_lengths = np.array([len(s) for s in spellings], dtype=np.int64)
        lengths[missing] = spell_lengths[which]
        out_starts = np.cumsum(lengths) - lengths  # where each input token's ids begin
        out = np.empty(int(lengths.sum()), dtype=np.uint32)
        out[out_starts[~missing]] = mapped[~missing]
        # the spelled tokens: gather each one's byte ids from the concatenated spellings
        flat = np.concatenate(spellings)
        flat_starts = np.cumsum(spell_lengths) - spell_lengths
        counts = spell_lengths[which]  # (missing,) bytes per spelled token
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        out[np.repeat(out_starts[missing], counts) + within] = flat[
            np.repeat(flat_starts[which], counts) + within
        ]
        return out

    def _spell(self, o200k_id: int) -> np.ndarray:
        """The compact ids of an o200k token's bytes."""
        if o200k_id in special_token_ids():
            name = get_tokenizer().decode_single_token_bytes(o200k_id).decode()
            raise VocabularyError(
                f"special token {name} (o200k id {o200k_id}) is not in this {self.size}-token "
                "compact vocabulary and cannot be spelled by bytes; the vocabulary holds only the "
                "special tokens its training data used"
            )
        data = get_tokenizer().decode_single_token_bytes(o200k_id)
        return self._bytes[np.frombuffer(data, dtype=np.uint8)]

    def to_o200k(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.o200k_ids[_as_ids(ids, self.size, "compact")]

    def o200k_to_compact(self) -> dict[int, int]:
        """{o200k id: compact id} for every kept token (e.g. to build a Hugging Face tokenizer
        whose ids are compact ids; tokens not in it are spelled by their bytes)."""
        return {int(o200k): compact for compact, o200k in enumerate(self.o200k_ids)}

    @property
    def sha256(self) -> str:
        """Checksum of the id list (what `to_dict` stores and `vocabulary_from_dict` verifies)."""
        return _checksum(self.o200k_ids.tolist())

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"o200k_ids": self.o200k_ids.tolist(), "sha256": self.sha256}

    def __repr__(self) -> str:
        return f"CompactVocabulary(size={self.size}, sha256={self.sha256[:12]})"


def _checksum(o200k_ids: list[int]) -> str:
    payload = json.dumps({"format": FORMAT, "tokenizer": ENCODING_NAME, "o200k_ids": o200k_ids})
    return hashlib.sha256(payload.encode()).hexdigest()


def vocabulary_from_dict(values: dict[str, Any] | None) -> Vocabulary:
    """The vocabulary `to_dict` wrote (None: the full vocabulary, as for checkpoints written
    before compact vocabularies). VocabularyError naming what is wrong when the data is not a
    vocabulary, its checksum disagrees or its size disagrees with its id list."""
    if values is None:
        return FullVocabulary()
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise VocabularyError(f"not a gpt-oss-lab vocabulary (expected format {FORMAT!r})")
    if values.get("tokenizer") != ENCODING_NAME:
        raise VocabularyError(
            f"vocabulary of tokenizer {values.get('tokenizer')!r}; "
            f"only {ENCODING_NAME} is supported"
        )
    kind = values.get("kind")
    if kind == "full":
        if values.get("vocab_size") != VOCAB_SIZE:
            raise VocabularyError(
                f"full vocabulary of size {values.get('vocab_size')}, expected {VOCAB_SIZE}"
            )
        return FullVocabulary()
    if kind != "compact":
        raise VocabularyError(f"vocabulary kind {kind!r} is invalid: valid are {VOCABULARIES}")
    ids = values.get("o200k_ids")
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise VocabularyError("a compact vocabulary's o200k_ids must be a list of integers")
    if _checksum(ids) != values.get("sha256"):
        raise VocabularyError(
            f"compact vocabulary checksum mismatch: stored {values.get('sha256')!r}, its "
            f"{len(ids)} ids hash to {_checksum(ids)!r}: the id map was altered or damaged"
        )
    vocabulary = CompactVocabulary(ids)
    if values.get("vocab_size") != vocabulary.size:
        raise VocabularyError(
            f"compact vocabulary says vocab_size={values.get('vocab_size')} "
            f"but holds {vocabulary.size} ids"
        )
    return vocabulary

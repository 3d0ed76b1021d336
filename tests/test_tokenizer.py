"""The o200k_harmony tokenizer works offline from the packaged vocabulary, has the release's
special-token ids, round-trips ids above 65535 through uint32, and never uses a vocabulary
file whose hash is wrong."""

from __future__ import annotations

import gzip
import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import requests
import tiktoken
import tiktoken.registry

from gpt_oss.model import tokenizer as tok

# bpe-openai reads its data through a deprecated importlib API; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:open_binary is deprecated:DeprecationWarning")


class NetworkUsed(RuntimeError):
    """Raised by the patched network functions: the test would have downloaded something."""


def go_offline(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> list[str]:
    """An empty tiktoken cache, no loaded encodings, and every network route raising.

    Returns the list of attempted network accesses (stays empty if nothing tried)."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise NetworkUsed(f"network access attempted: {args[:2]!r}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings already loaded
    tok.get_tokenizer.cache_clear()
    return attempts


@pytest.fixture
def offline(tmp_path, monkeypatch) -> list[str]:
    yield go_offline(monkeypatch, tmp_path / "tiktoken-cache")
    tok.get_tokenizer.cache_clear()


@pytest.fixture(scope="module")
def encoding(tmp_path_factory) -> tiktoken.Encoding:
    """The tokenizer, loaded once offline into a temporary cache."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        attempts = go_offline(monkeypatch, tmp_path_factory.mktemp("tiktoken-cache"))
        loaded = tok.get_tokenizer()
        assert attempts == []
    tok.get_tokenizer.cache_clear()
    return loaded


def test_loads_offline_from_the_packaged_vocabulary(offline, tmp_path):
    cache_file = tmp_path / "tiktoken-cache" / hashlib.sha1(tok.O200K_URL.encode()).hexdigest()
    assert not cache_file.exists()
    encoding = tok.get_tokenizer()
    assert offline == []  # nothing tried the network
    assert hashlib.sha256(cache_file.read_bytes()).hexdigest() == tok.O200K_SHA256
    assert encoding.decode(encoding.encode("Once upon a time")) == "Once upon a time"


def test_the_network_guard_catches_a_download(offline):
    """Control for the test above: without the seeded cache, tiktoken goes to the network."""
    with pytest.raises(NetworkUsed):
        tiktoken.get_encoding("o200k_harmony")
    assert len(offline) == 1


def test_vocabulary_size_and_endoftext(encoding):
    assert encoding.name == "o200k_harmony"
    assert encoding.n_vocab == tok.VOCAB_SIZE == 201088
    assert encoding.eot_token == tok.ENDOFTEXT_ID == 199999
    assert encoding.encode(tok.ENDOFTEXT, allowed_special="all") == [199999]


@pytest.mark.parametrize(
    "token,token_id",
    [
        ("<|startoftext|>", 199998),
        ("<|endoftext|>", 199999),
        ("<|return|>", 200002),
        ("<|constrain|>", 200003),
        ("<|channel|>", 200005),
        ("<|start|>", 200006),
        ("<|end|>", 200007),
        ("<|message|>", 200008),
        ("<|call|>", 200012),
        ("<|reserved_200013|>", 200013),
        ("<|reserved_201087|>", 201087),
    ],
)
def test_harmony_special_token_ids(encoding, token, token_id):
    assert encoding.encode_single_token(token) == token_id
    assert encoding.decode([token_id]) == token


def test_special_tokens_are_plain_text_unless_allowed(encoding):
    with pytest.raises(ValueError, match="disallowed special token"):
        encoding.encode("<|end|>")
    assert 200007 not in encoding.encode("<|end|>", disallowed_special=())


def test_ids_above_65535_round_trip_through_uint32(encoding, tmp_path):
    text = (
        "<|start|>user<|message|>Héllo, 世界! 🦙 Tiny stories.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Once upon a time.<|return|><|endoftext|>"
    )
    ids = encoding.encode(text, allowed_special="all")
    assert max(ids) >= 200000 and sum(i > 65535 for i in ids) >= 8
    assert not np.array_equal(np.array(ids, dtype=np.int64).astype(np.uint16), ids)  # why uint32
    path = tmp_path / "tokens.bin"
    np.array(ids, dtype=np.uint32).tofile(path)
    stored = np.fromfile(path, dtype=np.uint32)
    assert stored.tolist() == ids
    assert encoding.decode(stored.tolist()) == text


def test_a_corrupted_cached_vocabulary_is_replaced_not_used(offline, tmp_path):
    cache_file = tmp_path / "tiktoken-cache" / hashlib.sha1(tok.O200K_URL.encode()).hexdigest()
    cache_file.parent.mkdir(parents=True)
    corrupted = b"IQ== 0\n"  # a valid-looking one-token vocabulary
    cache_file.write_bytes(corrupted)
    with pytest.raises(NetworkUsed):  # tiktoken alone re-checks the hash and re-downloads
        tiktoken.get_encoding("o200k_harmony")
    cache_file.write_bytes(corrupted)
    encoding = tok.get_tokenizer()  # our seeding replaces the bad file before tiktoken reads it
    assert encoding.n_vocab == 201088
    assert hashlib.sha256(cache_file.read_bytes()).hexdigest() == tok.O200K_SHA256
    assert len(offline) == 1  # only the tiktoken-alone attempt above


def test_a_corrupted_packaged_vocabulary_is_an_error(offline, tmp_path, monkeypatch):
    import bpe_openai

    fake_package = tmp_path / "bpe_openai"
    (fake_package / "data").mkdir(parents=True)
    (fake_package / "data" / "o200k_base.tiktoken.gz").write_bytes(gzip.compress(b"IQ== 0\n"))
    monkeypatch.setattr(bpe_openai, "__file__", str(fake_package / "__init__.py"))
    with pytest.raises(tok.TokenizerError, match="sha256"):
        tok.get_tokenizer()

"""The o200k_harmony tokenizer through tiktoken, offline from a vocabulary file on PyPI.

tiktoken downloads o200k_base on first use and caches it under a hash of the URL. When the
`bpe-openai` package is installed we place its copy of the file in that cache (after checking
its sha256), so tiktoken's own loader finds it and never touches the network. Without it,
tiktoken downloads as usual. Either way tiktoken verifies the hash: no other vocabulary can
be used silently.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import tiktoken

ENCODING_NAME = "o200k_harmony"
VOCAB_SIZE = 201088
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 199999
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


class TokenizerError(RuntimeError):
    """The vocabulary file is missing or is not the one o200k_harmony needs."""


def tiktoken_cache_dir() -> Path:
    """The directory tiktoken reads its downloads from (same rules as tiktoken.load)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _cache_path() -> Path:
    return tiktoken_cache_dir() / hashlib.sha1(O200K_URL.encode()).hexdigest()


def _packaged_vocabulary() -> bytes | None:
    """o200k_base as shipped by the bpe-openai wheel, or None when it is not installed."""
    try:
        import bpe_openai
    except ImportError:
        return None
    path = Path(bpe_openai.__file__).parent / "data" / "o200k_base.tiktoken.gz"
    if not path.exists():
        return None
    data = gzip.decompress(path.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_SHA256:
        raise TokenizerError(f"{path} has sha256 {digest}, expected {O200K_SHA256} (o200k_base)")
    return data


def seed_tiktoken_cache() -> bool:
    """Put the packaged o200k_base where tiktoken looks; True if the cache now holds it."""
    target = _cache_path()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == O200K_SHA256:
        return True
    data = _packaged_vocabulary()
    if data is None:
        return False
    if os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR")) == "":
        return False  # caching disabled by the user: tiktoken will download
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return True


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """tiktoken's o200k_harmony (n_vocab 201088, <|endoftext|> = 199999)."""
    seed_tiktoken_cache()
    encoding = tiktoken.get_encoding(ENCODING_NAME)
    if encoding.n_vocab != VOCAB_SIZE or encoding.encode_single_token(ENDOFTEXT) != ENDOFTEXT_ID:
        raise TokenizerError(
            f"{ENCODING_NAME} has n_vocab {encoding.n_vocab}, expected {VOCAB_SIZE}: "
            f"wrong tiktoken version?"
        )
    return encoding

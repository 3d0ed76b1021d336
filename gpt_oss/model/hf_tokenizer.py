"""o200k_harmony as a Hugging Face tokenizer (tokenizer.json), for exported models.

transformers' TikTokenConverter turns tiktoken's byte-pair ranks into a `tokenizers` BPE with
byte-level pre-tokenization and o200k's split pattern. The special tokens are then added BY ID:
o200k_harmony gives id 200018 two names (`<|endofprompt|>` and `<|reserved_200018|>`), so adding
its name list in order would shift every id above 200018 by one. Each id gets the name tiktoken
decodes it to; `tokenizers` holds one name per id, so the alias `<|reserved_200018|>` is read as
plain text by the exported tokenizer (tiktoken with allowed_special="all" reads it as 200018).

The post-processor prepends `<|endoftext|>` (the BOS), as `python -m gpt_oss.generate` does
(`start`): our models see it before every document, so a pipeline prompt is encoded exactly
like ours. `add_special_tokens=False` gives the bare o200k ids.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from gpt_oss.model.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, O200K_URL, VOCAB_SIZE, get_tokenizer

FIRST_SPECIAL_ID = 199998  # o200k_base's ranks end at 199997; the specials fill 199998..201087


class TokenizerExportError(RuntimeError):
    """The Hugging Face tokenizer cannot be built (transformers missing, or another vocabulary)."""


def special_token_names() -> list[str]:
    """One name per special id, FIRST_SPECIAL_ID .. VOCAB_SIZE - 1, as tiktoken decodes it."""
    encoding = get_tokenizer()
    return [
        encoding.decode_single_token_bytes(i).decode() for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)
    ]


@functools.cache  # ~10 s of merges to derive: once per process, however many exports
def build_tokenizer(vocab_size: int, model_max_length: int) -> Any:
    """A transformers PreTrainedTokenizerFast that encodes as get_tokenizer() does, with
    `<|endoftext|>` as BOS, EOS and padding, for a model with vocab_size outputs (>= 201088).
    Raises TokenizerExportError for a smaller vocabulary or without transformers."""
    if vocab_size < VOCAB_SIZE:
        raise TokenizerExportError(
            f"model vocab_size={vocab_size} is smaller than o200k_harmony's {VOCAB_SIZE}: "
            "no Hugging Face tokenizer fits it"
        )
    try:
        from tokenizers import AddedToken, processors
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError as error:
        raise TokenizerExportError(
            f"the export's tokenizer needs transformers ({error}): pip install 'gpt-oss-lab[hf]'"
        ) from error
    encoding = get_tokenizer()  # also puts the packaged o200k_base where tiktoken reads it
    tokenizer = TikTokenConverter(vocab_file=O200K_URL, pattern=encoding._pat_str).converted()
    if tokenizer.get_vocab_size() != FIRST_SPECIAL_ID:
        raise TokenizerExportError(
            f"o200k_base converted to {tokenizer.get_vocab_size()} tokens, "
            f"expected {FIRST_SPECIAL_ID}"
        )
    names = special_token_names()
    tokenizer.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{ENDOFTEXT} $A",
            pair=f"{ENDOFTEXT} $A {ENDOFTEXT} $B:1",
            special_tokens=[(ENDOFTEXT, ENDOFTEXT_ID)],
        ),
    ])  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        clean_up_tokenization_spaces=False,  # decode returns exactly the text tiktoken decodes
        model_max_length=model_max_length,
    )


def save_tokenizer(tokenizer: Any, directory: str | Path) -> list[Path]:
    """Write build_tokenizer's tokenizer as tokenizer.json and tokenizer_config.json."""
    written = [Path(p) for p in tokenizer.save_pretrained(str(directory))]
    # transformers 5 names its class TokenizersBackend, which 4.x (vLLM, lm-eval pins) does not
    # know; both load PreTrainedTokenizerFast from the same tokenizer.json.
    config_path = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return written

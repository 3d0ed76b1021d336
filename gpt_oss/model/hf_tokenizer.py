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

A compact vocabulary (gpt_oss.model.vocabulary) keeps a subset of o200k's ids and spells every
other token by its bytes. No `tokenizer.json` can spell a token: a BPE emits one id per piece,
and the kept tokens are reached through merges of tokens that are not kept, so the merges cannot
simply be cut. The compact export's tokenizer therefore runs o200k's BPE unchanged and renumbers
its output: kept tokens get their compact ids, so for text made of kept tokens the ids equal
`vocabulary.encode` exactly; a token the vocabulary spells gets an id at or above the model's
vocab_size (vocab_size + its rank among the others), which the model refuses loudly (an index
error), never a silent other token. Encode such text with `vocabulary.encode`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from gpt_oss.model.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, O200K_URL, VOCAB_SIZE, get_tokenizer
from gpt_oss.model.vocabulary import Vocabulary

FIRST_SPECIAL_ID = 199998  # o200k_base's ranks end at 199997; the specials fill 199998..201087


class TokenizerExportError(RuntimeError):
    """The Hugging Face tokenizer cannot be built (transformers missing, or another vocabulary)."""


def special_token_names() -> list[str]:
    """One name per special id, FIRST_SPECIAL_ID .. VOCAB_SIZE - 1, as tiktoken decodes it."""
    encoding = get_tokenizer()
    return [
        encoding.decode_single_token_bytes(i).decode() for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)
    ]


def model_ids(vocabulary: Vocabulary | None) -> list[int]:
    """(201088,) the exported tokenizer's id for each o200k id: itself for the full vocabulary;
    for a compact one its compact id when kept, else vocab_size + its rank among the others."""
    if vocabulary is None or vocabulary.kind == "full":
        return list(range(VOCAB_SIZE))
    kept = vocabulary.o200k_to_compact()
    spelled = iter(range(vocabulary.size, VOCAB_SIZE))
    return [kept[i] if i in kept else next(spelled) for i in range(VOCAB_SIZE)]


@functools.cache  # ~10 s of merges to derive: once per process, however many exports
def build_tokenizer(model_max_length: int, vocabulary: Vocabulary | None = None) -> Any:
    """A transformers PreTrainedTokenizerFast that encodes as `vocabulary` (default: the full
    o200k_harmony) does, with `<|endoftext|>` as BOS, EOS and padding (see the module docstring
    for a compact vocabulary). Raises TokenizerExportError without transformers."""
    try:
        from tokenizers import AddedToken, Tokenizer, processors
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
    ids = model_ids(vocabulary)
    tokenizer = Tokenizer.from_str(json.dumps(_renumbered(json.loads(tokenizer.to_str()), ids)))
    endoftext = ids[ENDOFTEXT_ID]
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{ENDOFTEXT} $A",
            pair=f"{ENDOFTEXT} $A {ENDOFTEXT} $B:1",
            special_tokens=[(ENDOFTEXT, endoftext)],
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


def _renumbered(tokenizer: dict[str, Any], ids: list[int]) -> dict[str, Any]:
    """tokenizer.json data with every o200k id replaced by ids[o200k id] (merges are strings)."""
    if ids == list(range(len(ids))):
        return tokenizer
    vocab = tokenizer["model"]["vocab"]
    tokenizer["model"]["vocab"] = {token: ids[i] for token, i in vocab.items()}
    for added in tokenizer["added_tokens"]:
        added["id"] = ids[added["id"]]
    return tokenizer


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

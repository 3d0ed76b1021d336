"""Entry point: continue prompts with a trained model.

    python -m gpt_oss.generate checkpoint=outputs/runs/<date>/<time> prompt="Once upon a time"
    python -m gpt_oss.generate checkpoint=path/to/gpt-oss-20b prompts_file=prompts.txt temperature=0

checkpoint is a run directory, one of our .pt files, or a Hugging Face directory (release
MXFP4 checkpoints included). Thin by design: load, encode, hand the token ids to
gpt_oss.model.sampling.generate, print. Generation writes no run directory (see conf/generate.yaml).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from gpt_oss.cli import exit_on_input_error
from gpt_oss.files import utf8_error, utf8_message
from gpt_oss.model.config import ConfigError, resolve_device
from gpt_oss.model.model import GptOss
from gpt_oss.model.precision import DTYPES, resolve_precision
from gpt_oss.model.sampling import (
    Generation,
    SamplingConfig,
    StreamDecoder,
    TokenCallback,
    generate,
)
from gpt_oss.model.vocabulary import FullVocabulary, Vocabulary, VocabularyError
from gpt_oss.paths import CONF_DIR
from gpt_oss.schema import check, checked_command_line
from gpt_oss.training.loading import load_text_vocabulary, load_with_vocabulary
from gpt_oss.training.runtime import set_device_threads
from gpt_oss.validation import ranged


@dataclass
class GenerateConfig:
    """conf/generate.yaml's schema: a misspelled key or a wrong type fails at compose time."""

    checkpoint: str = MISSING  # run dir, .pt file, or Hugging Face directory
    prompt: str = "Once upon a time"
    prompts_file: str | None = None  # .txt: one prompt per line; .jsonl: {"prompt" or "text": ...}
    max_new_tokens: int = ranged(200, "[1, inf)")
    temperature: float = ranged(0.8, "[0, inf)")  # 0 = greedy
    top_k: int = ranged(0, "[0, inf)")  # 0 = off
    top_p: float = ranged(0.95, "(0, 1]")  # 1 = off
    seed: int | None = ranged(1337, "[0, 18446744073709551615]")  # torch's range; null = unseeded
    stop: list[str] = field(default_factory=lambda: ["<|endoftext|>"])  # token texts or ids
    start: str | None = "<|endoftext|>"  # prepended to every prompt; null = none
    batch_size: int = ranged(8, "[1, inf)")  # prompts generated together
    stream: bool = True  # print a single prompt's tokens as they come
    device: str = "auto"  # auto = cuda when present, else cpu
    dtype: str = "auto"  # auto = bf16 on cuda, fp32 on cpu; or bf16, fp16, fp32
    threads: int = ranged(0, "[0, inf)")  # CPU: intra-op threads; 0 = the cores free of other work


ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)


# ------------------------------------------------------------------ prompts and tokens
def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: .jsonl lines with "prompt" or "text"; otherwise one per line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts_file={str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"prompts_file: {utf8_message(path, utf8_error(path))}") from error
    lines = [line for line in text.splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        record = json.loads(line)
        if "prompt" not in record and "text" not in record:
            raise ConfigError(
                f"{path}:{number} has no 'prompt' or 'text' field (keys: {sorted(record)})"
            )
        prompts.append(record.get("prompt", record.get("text")))
    return prompts


def token_id(text: str, what: str = "stop token", vocabulary: Vocabulary | None = None) -> int:
    """A token (stop or start) given as its text (special tokens included) or as its id in the
    model's vocabulary (default: the full o200k_harmony one)."""
    vocabulary = vocabulary or FullVocabulary()
    if text.isdigit():
        return int(text)
    try:
        return vocabulary.token_id(text)
    except VocabularyError as error:
        raise ConfigError(f"{what} {error}") from error


def encode_prompt(text: str, start: str | None, vocabulary: Vocabulary | None = None) -> list[int]:
    """Model ids of start + text (default vocabulary: the full o200k_harmony one); special
    tokens written in the text are kept as such."""
    vocabulary = vocabulary or FullVocabulary()
    ids = [token_id(start, "start token", vocabulary)] if start else []
    try:
        return ids + vocabulary.encode(text, allowed_special="all")
    except VocabularyError as error:
        raise ConfigError(f"prompt {text[:40]!r}: {error}") from error


# ------------------------------------------------------------------ running and printing
def run(cfg: DictConfig, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> list[Generation]:
    """Check every setting, load, generate every prompt in batches, print prompt +
    continuation and the speed."""
    check(cfg, GenerateConfig)
    device = resolve_device(cfg.device)
    set_device_threads(device, cfg.threads, "threads")
    sampling = SamplingConfig(cfg.temperature, cfg.top_k, cfg.top_p)
    sampling.validate()
    texts = read_prompts(cfg.prompts_file) if cfg.prompts_file else [cfg.prompt]
    vocabulary = load_text_vocabulary(cfg.checkpoint)  # cheap: no weights are read
    prompts = [encode_prompt(text, cfg.start, vocabulary) for text in texts]
    stops = [token_id(str(s), vocabulary=vocabulary) for s in cfg.stop]
    model, _, _ = load_with_vocabulary(
        cfg.checkpoint, device, DTYPES[resolve_precision(cfg.dtype, device, "dtype")]
    )
    results = []
    for first in range(0, len(prompts), cfg.batch_size):
        batch = slice(first, first + cfg.batch_size)
        streaming = cfg.stream and len(prompts) == 1
        results.append(
            _generate_and_print(
                model,
                vocabulary,
                cfg,
                sampling,
                stops,
                texts[batch],
                prompts[batch],
                first,
                streaming,
                out,
            )
        )
        err.write(speed_report(results[-1]) + "\n")
    return results


def _generate_and_print(
    model: GptOss,
    vocabulary: Vocabulary,
    cfg: DictConfig,
    sampling: SamplingConfig,
    stops: list[int],
    texts: list[str],
    prompts: list[list[int]],
    first_index: int,
    streaming: bool,
    out: TextIO,
) -> Generation:
    """One batch: a single streamed prompt token by token, otherwise each prompt at the end."""
    on_token = None
    if streaming:
        decoder = StreamDecoder(vocabulary)
        out.write(texts[0])
        out.flush()
        on_token = _printer(out, decoder)
    result = generate(
        model, prompts, cfg.max_new_tokens, sampling, cfg.seed, stops, on_token=on_token
    )
    if streaming:
        out.write(decoder.flush() + "\n")
    else:
        for index, (text, tokens) in enumerate(zip(texts, result.tokens, strict=True), first_index):
            out.write(f"--- prompt {index} ---\n{text}{vocabulary.decode(tokens)}\n")
    out.flush()
    return result


def _printer(out: TextIO, decoder: StreamDecoder) -> TokenCallback:
    def on_token(row: int, token: int) -> None:
        out.write(decoder.push(token))
        out.flush()

    return on_token


def speed_report(result: Generation) -> str:
    """One line: prefill time and decode speed in new tokens per second."""
    new = sum(len(t) for t in result.tokens)
    return (
        f"[prefill {result.prompt_tokens} tokens in {result.prefill_seconds:.3f} s | "
        f"decode {result.decode_tokens} tokens in {result.decode_seconds:.3f} s = "
        f"{result.decode_tokens_per_s:.1f} tokens/s | {new} new tokens, "
        f"finished: {', '.join(result.finish_reasons)}]"
    )


@checked_command_line(GenerateConfig)
@hydra.main(version_base=None, config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()

"""Entry point: loss, perplexity and bits per byte of a checkpoint on a text file.

    python -m gpt_oss.evaluate checkpoint=outputs/runs/<date>/<time> text_file=held_out.jsonl

Documents come from a .jsonl file ({"text": ...} per line) or a text file split at a separator
(<|endoftext|> by default, as in TinyStories' .txt files). Each document is scored as training
sees it (gpt_oss.data.tokens puts <|endoftext|> before every document): after an <|endoftext|>, with
its end predicted as the next <|endoftext|>. Long documents are
scored in windows of context_length tokens that move by stride, so every token is scored once
and, past the first window, with at least context_length - stride tokens of context.
Bits per byte = sum of token losses in nats / (UTF-8 bytes of the documents * ln 2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig
from tqdm.auto import tqdm

from gpt_oss.cli import exit_on_input_error
from gpt_oss.data.tokens import encode_text
from gpt_oss.files import utf8_error, utf8_message
from gpt_oss.model.config import ConfigError, resolve_device
from gpt_oss.model.losses import IGNORE_INDEX, linear_cross_entropy
from gpt_oss.model.model import GptOss
from gpt_oss.model.precision import DTYPES, resolve_precision
from gpt_oss.model.tokenizer import get_tokenizer
from gpt_oss.model.vocabulary import FullVocabulary, Vocabulary
from gpt_oss.paths import CONF_DIR
from gpt_oss.schema import check, checked_command_line
from gpt_oss.training.loading import load_text_vocabulary, load_with_vocabulary
from gpt_oss.training.metrics import bits_per_byte
from gpt_oss.training.runtime import set_device_threads
from gpt_oss.validation import ranged

DEFAULT_CONTEXT = 1024  # when the checkpoint does not say what it was trained on
LOSS_CHUNK_TOKENS = 1024  # logits exist for this many tokens at a time (201k vocab: 0.8 GB fp32)


@dataclass
class EvaluateConfig:
    """conf/evaluate.yaml's schema: a misspelled key or a wrong type fails at compose time."""

    checkpoint: str = MISSING  # run dir, .pt file, or Hugging Face directory
    text_file: str = MISSING  # .jsonl ({"text": ...} per line) or text split at `separator`
    separator: str | None = "<|endoftext|>"  # between documents of a text file; null = lines
    field: str = "text"  # the .jsonl field holding a document
    # null = the training seq_len stored with the checkpoint (<= the model's positions)
    context_length: int | None = ranged(None, "[1, inf)")
    stride: int | None = ranged(None, "[1, inf)")  # null = context_length // 2
    batch_size: int = ranged(8, "[1, inf)")  # windows per forward pass
    max_documents: int | None = ranged(None, "[1, inf)")  # null = all
    device: str = "auto"  # auto = cuda when present, else cpu
    dtype: str = "auto"  # auto = bf16 on cuda and native-bf16 CPUs, else fp32; bf16, fp16, fp32
    output: str | None = None  # also write the result as JSON here
    threads: int = ranged(0, "[0, inf)")  # CPU: intra-op threads; 0 = the cores free of other work
    progress: bool = True  # a progress bar (tokens scored) on stderr


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


@dataclass
class Score:
    """Summed token losses and what they cover; the averages as properties."""

    loss_sum: float  # nats, over every scored token
    tokens: int
    bytes: int  # UTF-8 bytes of the documents
    documents: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.loss_sum, self.bytes)

    def to_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bpb": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "documents": self.documents,
        }


def read_documents(
    path: str | Path,
    separator: str | None = "<|endoftext|>",
    field: str = "text",
    max_documents: int | None = None,
) -> list[str]:
    """Documents of a .jsonl file (one {field: text} per line, as gpt_oss.data.sources reads them)
    or of a text file split at separator (None = one per line), stripped; empty ones are
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"text_file={str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"text_file: {utf8_message(path, utf8_error(path))}") from error
    if path.suffix == ".jsonl":
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                if field not in record:
                    raise ConfigError(
                        f"{path}:{number} has no field {field!r} (keys: {sorted(record)})"
                    )
                documents.append(record[field])
        documents = [d for d in documents if d and d.strip()]
    else:
        pieces = text.split(separator) if separator else text.splitlines()
        documents = [d.strip() for d in pieces if d.strip()]
    if not documents:
        raise ConfigError(f"text_file={str(path)!r} holds no documents")
    return documents[:max_documents]


def document_windows(
    tokens: list[int], context_length: int, stride: int
) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows over one token sequence; targets already scored by an earlier
    window are IGNORE_INDEX, so each of the len(tokens) - 1 predictions counts exactly once."""
    check_stride(stride, context_length)
    inputs, targets = tokens[:-1], tokens[1:]
    windows, scored_until = [], 0
    for begin in range(0, len(inputs), stride):
        end = min(begin + context_length, len(inputs))
        window_targets = [IGNORE_INDEX] * (scored_until - begin) + targets[scored_until:end]
        windows.append((inputs[begin:end], window_targets))
        scored_until = end
        if end == len(inputs):
            break
    return windows


def check_stride(stride: int, context_length: int) -> None:
    """A window may move by at most its length, or tokens between windows go unscored."""
    if not 0 < stride <= context_length:
        raise ConfigError(
            f"stride={stride} is invalid: must be in [1, context_length={context_length}]"
        )


@torch.inference_mode()
def window_loss_sum(model: GptOss, windows: list[tuple[list[int], list[int]]]) -> float:
    """Summed cross-entropy (nats) of the scored targets of a batch of windows, right-padded
    (causal attention: padding after a token never changes its prediction)."""
    device, width = model.lm_head.weight.device, max(len(w[0]) for w in windows)
    inputs = torch.zeros(len(windows), width, dtype=torch.long)
    targets = torch.full((len(windows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (window_inputs, window_targets) in enumerate(windows):
        inputs[row, : len(window_inputs)] = torch.tensor(window_inputs)
        targets[row, : len(window_targets)] = torch.tensor(window_targets)
    hidden, _ = model.hidden_states(inputs.to(device))  # (B, T, H)
    targets = targets.to(device).flatten()  # (B*T,)
    # The training loss's chunked cross-entropy (float32 logits LOSS_CHUNK_TOKENS rows at a
    # time), a mean over the scored targets; times their count it is the sum (to ~1e-7).
    mean = linear_cross_entropy(
        hidden.flatten(0, 1), model.lm_head.weight, targets, LOSS_CHUNK_TOKENS
    )
    return float(mean) * int((targets != IGNORE_INDEX).sum())


def score_documents(
    model: GptOss,
    documents: list[str],
    context_length: int,
    stride: int,
    batch_size: int,
    vocabulary: Vocabulary | None = None,
    progress: bool = False,
    autocast: torch.dtype | None = None,
) -> Score:
    """Loss over every token of every document (and its closing <|endoftext|>), the tokens in
    the model's vocabulary (default: the full o200k_harmony one); bytes are the documents'
    UTF-8 bytes whatever the vocabulary, so bits per byte compare across vocabularies."""
    tokenizer, vocabulary = get_tokenizer(), vocabulary or FullVocabulary()
    endoftext = vocabulary.endoftext_id
    windows, tokens, num_bytes = [], 0, 0
    for document in documents:
        encoded, document_bytes = encode_text(tokenizer, document)  # as training tokenizes
        ids = [endoftext, *vocabulary.from_o200k(encoded).tolist(), endoftext]
        num_bytes += document_bytes
        if max(ids) >= model.config.vocab_size:
            raise ConfigError(
                f"token id {max(ids)} is outside the model's vocabulary ({model.config.vocab_size})"
            )
        windows += document_windows(ids, context_length, stride)
        tokens += len(ids) - 1
    windows.sort(key=lambda w: len(w[0]), reverse=True)  # similar lengths share a batch
    loss_sum, device = 0.0, model.lm_head.weight.device.type
    with tqdm(total=tokens, desc="evaluate", unit="tok", unit_scale=True, disable=not progress,
              mininterval=1.0, dynamic_ncols=True) as bar:  # fmt: skip
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            with torch.autocast(device, autocast, enabled=autocast is not None):
                loss_sum += window_loss_sum(model, batch)
            bar.update(sum(sum(t != IGNORE_INDEX for t in targets) for _, targets in batch))
    return Score(loss_sum, tokens, num_bytes, len(documents))


def weights_and_autocast(
    precision: str, device: torch.device
) -> tuple[torch.dtype, torch.dtype | None]:
    """(weight dtype, autocast dtype or None) for a resolved precision. On a GPU the weights
    are cast (a 20B model in bf16 fits one GPU); on a CPU they stay float32 and the matmuls
    run under autocast, as training's validation runs them (so the two agree), at the speed of
    the CPU's bf16 units."""
    dtype = DTYPES[precision]
    if device.type != "cpu" or precision == "fp32":
        return dtype, None
    return torch.float32, dtype


def default_context(run_config: dict[str, Any], model: GptOss) -> int:
    """The sequence length the model was trained on when its checkpoint says, else 1024."""
    trained = (run_config.get("trainer") or {}).get("seq_len")
    return int(trained or min(DEFAULT_CONTEXT, model.config.max_position_embeddings))


def run(cfg: DictConfig) -> Score:
    """Check every setting, load, score, print (and write cfg.output when set)."""
    check(cfg, EvaluateConfig)
    if cfg.stride is not None and cfg.context_length is not None:
        check_stride(cfg.stride, cfg.context_length)
    device = resolve_device(cfg.device)
    set_device_threads(device, cfg.threads, "threads")
    documents = read_documents(cfg.text_file, cfg.separator, cfg.field, cfg.max_documents)
    vocabulary = load_text_vocabulary(cfg.checkpoint)  # cheap: no weights are read
    weights, autocast = weights_and_autocast(
        resolve_precision(cfg.dtype, device, "dtype", native_cpu_bf16=True), device
    )
    model, _, run_config = load_with_vocabulary(cfg.checkpoint, device, weights)
    context = cfg.context_length or default_context(run_config, model)
    positions = model.config.max_position_embeddings
    if context > positions:
        raise ConfigError(
            f"context_length={context} is invalid: must be in [1, {positions}], the model's "
            "max_position_embeddings"
        )
    stride = cfg.stride or max(context // 2, 1)
    check_stride(stride, context)
    score = score_documents(
        model, documents, context, stride, cfg.batch_size, vocabulary, cfg.progress, autocast
    )
    print(
        f"{cfg.checkpoint} on {cfg.text_file}: "
        f"{score.documents} documents, {score.tokens:,} tokens, "
        f"{score.bytes:,} bytes (context {context}, stride {stride})"
    )
    print(
        f"loss {score.loss:.4f} | perplexity {score.perplexity:.3f} | "
        f"bits per byte {score.bits_per_byte:.4f}"
    )
    if cfg.output:
        Path(cfg.output).write_text(
            json.dumps(score.to_dict() | {"context_length": context, "stride": stride})
        )
    return score


@checked_command_line(EvaluateConfig)
@hydra.main(version_base=None, config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()

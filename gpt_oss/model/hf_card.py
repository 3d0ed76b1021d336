"""The model card (README.md) of an exported model: what it is, how it was trained, how it scores.

Written through huggingface_hub's ModelCard, so the metadata header is the Hub's own format.
Every number comes from the run: its checkpoint (step, tokens seen), metrics.jsonl (validation
loss and bits per byte), config.yaml (data, parameter counts) and .hydra/overrides.yaml (the
command).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.size import parameter_counts


@dataclass
class TrainingFacts:
    """What a run directory says about the exported weights; None where it says nothing."""

    step: int | None = None
    tokens_seen: int | None = None
    val: dict[str, Any] | None = None  # the validation record at `step`: loss, bpb, perplexity
    best_val: dict[str, Any] | None = None  # the record with the lowest validation loss
    data: dict[str, Any] = field(default_factory=dict)  # run config's data_prepared (+ data)
    command: str | None = None
    init_from: str | None = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; [] when the file is missing."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_facts(state: dict[str, Any], run_dir: Path | None) -> TrainingFacts:
    """TrainingFacts from a checkpoint's payload and (when known) its run directory."""
    run_config = state.get("run_config") or {}
    facts = TrainingFacts(step=state.get("step"), tokens_seen=state.get("tokens_seen"))
    facts.data = {**(run_config.get("data") or {}), **(run_config.get("data_prepared") or {})}
    facts.init_from = (run_config.get("trainer") or {}).get("init_from")
    if run_dir is None:
        return facts
    val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") == "val"]
    facts.val = next((r for r in val if r.get("step") == facts.step), None)
    facts.best_val = min(val, key=lambda r: r["loss"], default=None)
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        facts.command = shlex.join(
            ["python", "-m", "gpt_oss.train", *yaml.safe_load(overrides.read_text())]
        )
    return facts


def model_card(
    config: ModelConfig, facts: TrainingFacts, name: str, export_command: str, compact: bool = False
) -> Any:
    """A huggingface_hub.ModelCard for the exported directory `name`; `compact`: the model's
    vocabulary is a compact subset of o200k_harmony (compact_vocabulary.json)."""
    from huggingface_hub import ModelCard, ModelCardData

    hub_data = facts.data.get("source") == "hub" and not facts.data.get("fallback")
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gpt_oss", "gpt-oss-lab", "mixture-of-experts", "trained-from-scratch"],
        datasets=[facts.data["hub_path"]] if hub_data and facts.data.get("hub_path") else None,
        model_name=name,
    )
    sections = [
        f"# {name}\n\nA GPT-OSS-architecture mixture-of-experts language model trained from "
        "scratch with gpt-oss-lab (PyTorch), exported for `transformers` (`GptOssForCausalLM`).",
        _architecture(config, compact),
        _training(facts),
        _usage(name) + (_COMPACT_NOTE if compact else ""),
        f"## Export\n\n```bash\n{export_command}\n```",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _architecture(config: ModelConfig, compact: bool) -> str:
    counts = parameter_counts(config)
    full = sum(kind == "full_attention" for kind in config.layer_types)
    rows = [
        ("parameters", f"{counts['total']:,} total, {counts['active']:,} active per token"),
        ("embedding / unembedding", f"{counts['embedding']:,} / {counts['unembedding']:,}"),
        ("hidden size", config.hidden_size),
        ("layers", f"{config.num_hidden_layers} ({full} full attention, "
                   f"{config.num_hidden_layers - full} sliding window {config.sliding_window})"),
        ("attention heads / key-value heads / head dim",
         f"{config.num_attention_heads} / {config.num_key_value_heads} / {config.head_dim}"),
        ("experts / per token / width", f"{config.num_experts} / {config.experts_per_token} / "
                                        f"{config.intermediate_size}"),
        ("vocabulary", f"{config.vocab_size:,} ("
                       + ("a compact subset of o200k_harmony" if compact else "o200k_harmony")
                       + ")"),
        ("positions", f"{config.max_position_embeddings:,}, RoPE theta {config.rope_theta:g}, "
                      f"YaRN factor {config.rope_scaling_factor:g}"),
    ]  # fmt: skip
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"## Architecture\n\n| | |\n|---|---|\n{table}"


def _training(facts: TrainingFacts) -> str:
    lines = ["## Training", ""]
    data = facts.data
    if data:
        lines.append(f"- data: {data.get('description') or data.get('name', 'unknown')}")
        if data.get("train_tokens"):
            lines.append(f"  ({data['train_tokens']:,} training tokens in "
                         f"{data.get('train_documents', 0):,} documents)")  # fmt: skip
        if data.get("fallback"):
            lines.append(f"- **data fallback**: {data['fallback']}")
    if facts.step is not None:
        lines.append(f"- steps: {facts.step:,}")
    if facts.tokens_seen is not None:
        lines.append(f"- tokens seen: {facts.tokens_seen:,}")
    if facts.init_from:
        lines.append(f"- initialized from: `{facts.init_from}`")
    if facts.val:
        lines.append(f"- validation at step {facts.val['step']:,} (these weights): loss "
                     f"{facts.val['loss']:.4f}, {facts.val['bpb']:.4f} bits per byte")  # fmt: skip
    if facts.best_val and facts.best_val is not facts.val:
        best = facts.best_val
        lines.append(f"- best validation: loss {best['loss']:.4f}, {best['bpb']:.4f} bits per "
                     f"byte at step {best['step']:,}")  # fmt: skip
    if facts.command:
        lines += ["", "Command:", "", f"```bash\n{facts.command}\n```"]
    if len(lines) == 2:
        lines.append("No training record came with these weights.")
    return "\n".join(lines)


def _usage(name: str) -> str:
    return f"""## Use

```python
from transformers import pipeline

generator = pipeline("text-generation", model="{name}")
print(generator("Once upon a time", max_new_tokens=100, do_sample=False)[0]["generated_text"])
```

The tokenizer is o200k_harmony; it prepends `<|endoftext|>` to every input (the model saw it
before every training document), and generation stops at `<|endoftext|>`.
`generation_config.json` samples as `python -m gpt_oss.generate` does (temperature 0.8, top-p 0.95).

Evaluate with [lm-evaluation-harness](https://github.com/EleutherAI/lm-evaluation-harness):

```bash
lm_eval --model hf --model_args pretrained={name},dtype=float32,add_bos_token=True \\
    --tasks lambada_openai,hellaswag --batch_size 8
```"""


_COMPACT_NOTE = """

**Compact vocabulary.** The model's ids are a subset of o200k_harmony's
(`compact_vocabulary.json`: the kept o200k ids in order); any other token is written as the ids
of its bytes. The tokenizer here gives exactly those ids for text made of kept tokens; a token
the vocabulary spells by bytes gets an id at or above `vocab_size`, which the model refuses (an
index error) rather than misreading. For any text, encode with gpt-oss-lab:

```python
import gpt_oss
vocabulary = gpt_oss.load_vocabulary("<this directory>")
input_ids = [vocabulary.endoftext_id, *vocabulary.encode(text)]
```"""

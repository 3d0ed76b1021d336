"""Evaluation: loss, perplexity and bits per byte equal the written-out sums of token losses;
sliding windows score every token exactly once; batching does not change the score; the CLI
reads .txt and .jsonl files and any checkpoint generate reads."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from gpt_oss.evaluate import document_windows, read_documents, run, score_documents
from gpt_oss.model.config import ConfigError
from gpt_oss.model.hf import export_hf
from gpt_oss.model.losses import IGNORE_INDEX
from gpt_oss.model.tokenizer import ENDOFTEXT_ID, get_tokenizer
from gpt_oss.training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    "Once upon a time, there was a little fox named Zoë. She loved the café by the river.",
    "Tom had a red ball. He played with it every day — until it rolled away! 🐶 found it.",
    "Hi.",
    " ".join(["The big bear walked to the park and sat under a tree to eat honey."] * 12),  # long
]


@pytest.fixture(autouse=True)
def one_thread():
    """Small models: one thread is as fast, and immune to other jobs on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model(make_model):
    return make_model(vocab_size=201088, sliding_window=16, attn_impl="sdpa", moe_impl="grouped")


def token_ids(document: str) -> list[int]:
    return [ENDOFTEXT_ID, *get_tokenizer().encode_ordinary(document), ENDOFTEXT_ID]


def written_out_loss_sum(model, ids: list[int], chunk: int) -> float:
    """Sum of -log p(token | the tokens before it in its chunk of `chunk` predictions)."""
    total = 0.0
    for begin in range(0, len(ids) - 1, chunk):
        piece = ids[begin : begin + chunk + 1]
        with torch.no_grad():
            logits = model(torch.tensor([piece[:-1]]))[0]  # (T, V)
        total += F.cross_entropy(logits.double(), torch.tensor(piece[1:]), reduction="sum").item()
    return total


@pytest.mark.parametrize(
    "length, context, stride", [(10, 4, 4), (10, 4, 1), (11, 6, 4), (3, 8, 4), (100, 32, 16)]
)
def test_windows_score_every_prediction_once_with_at_least_context_minus_stride_before(
    length, context, stride
):
    tokens = list(range(1000, 1000 + length))
    windows = document_windows(tokens, context, stride)
    scored = []
    for number, (inputs, targets) in enumerate(windows):
        assert len(inputs) == len(targets) <= context
        begin = inputs[0] - 1000
        assert inputs == tokens[begin : begin + len(inputs)]  # a contiguous slice
        for offset, target in enumerate(targets):
            if target != IGNORE_INDEX:
                assert target == tokens[begin + offset + 1]
                assert number == 0 or offset + 1 >= context - stride + 1  # tokens of context
                scored.append(target)
    assert scored == tokens[1:]


def test_bad_stride_names_the_field():
    with pytest.raises(ConfigError, match="stride=9"):
        document_windows(list(range(20)), 8, 9)


def test_score_equals_the_written_out_sum_of_token_losses(model):
    documents = DOCUMENTS[:3]  # each shorter than the context: one window each
    score = score_documents(model, documents, context_length=64, stride=32, batch_size=2)
    expected = sum(written_out_loss_sum(model, token_ids(d), 64) for d in documents)
    assert score.loss_sum == pytest.approx(expected, rel=1e-5)
    assert score.tokens == sum(len(token_ids(d)) - 1 for d in documents)
    assert (
        score.bytes
        == sum(len(d.encode("utf-8")) for d in documents)
        > sum(len(d) for d in documents)
    )
    assert score.documents == 3
    assert score.loss == pytest.approx(expected / score.tokens, rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(score.loss), rel=1e-9)
    assert score.bits_per_byte == pytest.approx(expected / (score.bytes * math.log(2)), rel=1e-5)


def test_long_documents_in_non_overlapping_windows_equal_chunked_sums(model):
    ids = token_ids(DOCUMENTS[3])
    assert len(ids) > 3 * 32
    score = score_documents(model, DOCUMENTS[3:], context_length=32, stride=32, batch_size=3)
    assert score.loss_sum == pytest.approx(written_out_loss_sum(model, ids, 32), rel=1e-5)


def test_batch_size_and_padding_do_not_change_the_score(model):
    one = score_documents(model, DOCUMENTS, context_length=24, stride=8, batch_size=1)
    many = score_documents(model, DOCUMENTS, context_length=24, stride=8, batch_size=5)
    assert many.tokens == one.tokens
    assert many.loss_sum == pytest.approx(one.loss_sum, rel=1e-5)


def test_read_documents_from_txt_and_jsonl(tmp_path):
    (tmp_path / "stories.txt").write_text(
        "First story.\nSecond line.\n<|endoftext|>\nSecond story.\n<|endoftext|>\n"
    )
    assert read_documents(tmp_path / "stories.txt") == [
        "First story.\nSecond line.",
        "Second story.",
    ]
    assert read_documents(tmp_path / "stories.txt", separator=None) == [
        "First story.",
        "Second line.",
        "<|endoftext|>",
        "Second story.",
        "<|endoftext|>",
    ]
    (tmp_path / "stories.jsonl").write_text('{"text": "One."}\n\n{"text": ""}\n{"text": "Two."}\n')
    assert read_documents(tmp_path / "stories.jsonl", max_documents=5) == ["One.", "Two."]
    with pytest.raises(ConfigError, match="no field 'story'"):
        read_documents(tmp_path / "stories.jsonl", field="story")
    with pytest.raises(ConfigError, match="does not exist"):
        read_documents(tmp_path / "missing.txt")


def compose_evaluate(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("evaluate", overrides=list(overrides))


def test_cli_reports_loss_perplexity_and_bits_per_byte(model, tmp_path):
    checkpoint = save_checkpoint(
        tmp_path / "model.pt", model, run_config={"trainer": {"seq_len": 24}}
    )
    text_file = tmp_path / "held_out.jsonl"
    text_file.write_text("\n".join(json.dumps({"text": d}) for d in DOCUMENTS))
    cfg = compose_evaluate(  # float32 like the reference below (auto is bf16 on AMX CPUs)
        f"checkpoint={checkpoint}", f"text_file={text_file}", f"output={tmp_path / 'r.json'}",
        "dtype=fp32",
    )
    printed = io.StringIO()
    with redirect_stdout(printed):
        score = run(cfg)
    expected = score_documents(model, DOCUMENTS, context_length=24, stride=12, batch_size=8)
    assert score.loss_sum == pytest.approx(expected.loss_sum, rel=1e-6)
    assert "4 documents" in printed.getvalue() and "(context 24, stride 12)" in printed.getvalue()
    assert (
        f"loss {score.loss:.4f} | perplexity {score.perplexity:.3f} | "
        f"bits per byte {score.bits_per_byte:.4f}" in printed.getvalue()
    )
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["bpb"] == pytest.approx(score.bits_per_byte) and written["context_length"] == 24


def test_a_hugging_face_directory_scores_like_our_checkpoint(model, tmp_path):
    export_hf(model, tmp_path / "hf")
    (tmp_path / "stories.txt").write_text("<|endoftext|>".join(DOCUMENTS[:3]))
    cfg = compose_evaluate(
        f"checkpoint={tmp_path / 'hf'}",
        f"text_file={tmp_path / 'stories.txt'}",
        "context_length=64",
        "dtype=fp32",  # as the reference below
    )
    with redirect_stdout(io.StringIO()):
        score = run(cfg)
    expected = score_documents(model, DOCUMENTS[:3], context_length=64, stride=32, batch_size=8)
    assert score.loss_sum == pytest.approx(expected.loss_sum, rel=1e-5)


def test_a_lone_surrogate_is_scored_as_training_tokenizes_it(model):
    """Broken UTF-16 in a .jsonl (a lone surrogate) is replaced, as data preparation does,
    instead of failing while counting bytes."""
    broken, replaced = "Tom saw a \ud800 dog.", "Tom saw a \ufffd dog."
    score = score_documents(model, [broken], context_length=64, stride=32, batch_size=1)
    expected = score_documents(model, [replaced], context_length=64, stride=32, batch_size=1)
    assert score.bytes == len(replaced.encode("utf-8"))
    assert score.tokens == expected.tokens and score.loss_sum == pytest.approx(expected.loss_sum)

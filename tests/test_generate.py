"""Generation: the KV cache is exact (sliding windows included), batches of different lengths
equal their prompts alone, greedy equals transformers' generate, sampling is reproducible and
filters what it should, the CLI loads our checkpoints and MXFP4 Hugging Face directories, and
a briefly trained model continues a prompt in its corpus's words."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file, save_file

from gpt_oss.cli import exit_on_input_error
from gpt_oss.generate import encode_prompt, run, token_id
from gpt_oss.model.config import ConfigError
from gpt_oss.model.hf import dequantize_mxfp4, export_hf
from gpt_oss.model.model import KVCache
from gpt_oss.model.sampling import (
    SamplingConfig,
    StreamDecoder,
    filter_top_k,
    filter_top_p,
    generate,
    left_pad,
    sample_from,
)
from gpt_oss.model.tokenizer import ENDOFTEXT_ID, get_tokenizer
from gpt_oss.training.checkpoint import save_checkpoint
from gpt_oss.training.loading import load_with_run_config, load_with_vocabulary

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 8  # small, so prompts and generations cross it many times
LENGTHS = (20, 5, 13, 1)  # longer than the window, shorter, and a single token
NEW = 24


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny models decode token by token: thread start-up costs more than it saves (and with
    other jobs on the cores, a second thread waiting at every op costs 10-100x)."""
    threads = torch.get_num_threads()
    if request.node.get_closest_marker("slow") is None:  # training keeps every core
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_prompts(lengths=LENGTHS, vocab: int = 1000, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def compose_generate(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("generate", overrides=list(overrides))


# ------------------------------------------------------------------ the KV cache
@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_greedy_with_cache_equals_full_recompute_across_the_window(make_model, attn_impl):
    model = make_model(sliding_window=WINDOW, attn_impl=attn_impl)
    prompts = random_prompts()
    cached = generate(model, prompts, NEW, stop_tokens=())
    recomputed = generate(model, prompts, NEW, stop_tokens=(), use_cache=False)
    assert cached.tokens == recomputed.tokens
    assert all(len(t) == NEW for t in cached.tokens)
    assert min(len(set(t)) for t in cached.tokens) > NEW // 3  # not one token repeated


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_cached_logits_equal_full_forward_logits_for_padded_batches(make_model, attn_impl):
    """Teacher-forced: every step through the cache gives the logits of a full forward pass."""
    model = make_model(sliding_window=WINDOW, attn_impl=attn_impl)
    prompts, continuation = random_prompts(), torch.randint(0, 1000, (4, 15))
    ids, valid = left_pad(prompts, 0)
    full_ids = torch.cat([ids, continuation], dim=1)
    full_valid = torch.cat([valid, torch.ones_like(continuation, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        expected = model(full_ids, key_valid=full_valid)  # (B, T, V)
        cache = KVCache.empty(model.config)
        steps = [model(ids, cache, valid, last_only=True)]
        steps += [model(continuation[:, i : i + 1], cache) for i in range(continuation.shape[1])]
    actual = torch.cat(steps, dim=1)  # (B, 1 + 15, V)
    torch.testing.assert_close(actual, expected[:, ids.shape[1] - 1 :], rtol=1e-5, atol=1e-5)


def test_sliding_layers_keep_only_the_window_and_full_layers_grow(make_model):
    model = make_model(sliding_window=WINDOW)
    cache = KVCache.empty(model.config)
    with torch.no_grad():
        model(torch.randint(0, 1000, (2, 20)), cache)
        model(torch.randint(0, 1000, (2, 1)), cache)
    kinds = model.config.layer_types
    sizes = {kind: layer.keys.shape[2] for kind, layer in zip(kinds, cache.layers, strict=True)}
    assert sizes == {"sliding_attention": WINDOW - 1, "full_attention": 21}
    assert cache.length == 21


def test_batched_prompts_of_different_lengths_equal_each_prompt_alone(make_model):
    model = make_model(sliding_window=WINDOW, attn_impl="sdpa", moe_impl="grouped")
    prompts = random_prompts()
    batched = generate(model, prompts, NEW, stop_tokens=())
    alone = [generate(model, [p], NEW, stop_tokens=()).tokens[0] for p in prompts]
    assert batched.tokens == alone


def test_each_row_stops_at_its_own_stop_token_and_max_new_tokens_bounds_the_rest(make_model):
    model = make_model(sliding_window=WINDOW)
    prompts = random_prompts()
    free = generate(model, prompts, NEW, stop_tokens=()).tokens
    stop = free[0][3]
    result = generate(model, prompts, NEW, stop_tokens=(stop,))
    for row, tokens in enumerate(free):
        expected = tokens[: tokens.index(stop)] if stop in tokens else tokens
        assert result.tokens[row] == expected
        assert result.finish_reasons[row] == ("stop" if stop in tokens else "length")
    assert result.finish_reasons[0] == "stop" and len(result.tokens[0]) <= 3


def test_on_token_streams_every_kept_token_in_order(make_model):
    model = make_model(sliding_window=WINDOW)
    seen: dict[int, list[int]] = {}
    result = generate(
        model,
        random_prompts(),
        10,
        SamplingConfig(1.0),
        seed=0,
        on_token=lambda row, token: seen.setdefault(row, []).append(token),
    )
    assert [seen[row] for row in range(4)] == result.tokens
    assert result.decode_tokens == 4 * 9 and result.prompt_tokens == sum(LENGTHS)
    assert result.prefill_seconds > 0 and result.decode_tokens_per_s > 0


# ------------------------------------------------------------------ parity with transformers
def test_greedy_equals_transformers_generate_on_exported_weights(make_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = make_model(sliding_window=WINDOW, attn_impl="sdpa", moe_impl="grouped")
    export_hf(model, tmp_path / "hf")
    hf = transformers.GptOssForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager", dtype=torch.float32
    ).eval()
    prompts = random_prompts()
    ours = generate(model, prompts, NEW, stop_tokens=())
    for prompt, tokens in zip(prompts, ours.tokens, strict=True):
        theirs = hf.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW, pad_token_id=0
        )
        assert theirs[0, len(prompt) :].tolist() == tokens
    ids, valid = left_pad(prompts, 0)  # their left padding and position ids agree with ours too
    theirs = hf.generate(
        ids, attention_mask=valid.long(), do_sample=False, max_new_tokens=NEW, pad_token_id=0
    )
    assert theirs[:, ids.shape[1] :].tolist() == ours.tokens


# ------------------------------------------------------------------ sampling
def test_seeded_sampling_is_reproducible_and_the_seed_matters(make_model):
    model = make_model(sliding_window=WINDOW)
    sampling = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9)
    first = generate(model, random_prompts(), NEW, sampling, seed=7, stop_tokens=())
    again = generate(model, random_prompts(), NEW, sampling, seed=7, stop_tokens=())
    other = generate(model, random_prompts(), NEW, sampling, seed=8, stop_tokens=())
    assert first.tokens == again.tokens
    assert first.tokens != other.tokens


def test_top_k_1_and_a_tiny_top_p_equal_greedy(make_model):
    model = make_model(sliding_window=WINDOW)
    greedy = generate(model, random_prompts(), NEW, stop_tokens=()).tokens
    for sampling in (SamplingConfig(1.5, top_k=1), SamplingConfig(1.5, top_p=1e-6)):
        assert (
            generate(model, random_prompts(), NEW, sampling, seed=3, stop_tokens=()).tokens
            == greedy
        )


def test_filter_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    kept = filter_top_k(logits, 5)
    assert (kept.isfinite().sum(dim=-1) == 5).all()
    top = logits.topk(5).indices
    assert torch.equal(kept.gather(-1, top), logits.gather(-1, top))


@pytest.mark.parametrize("scale", [10.0, 0.01])  # peaked (nucleus within 256) and flat (not)
def test_filter_top_p_keeps_the_smallest_set_reaching_p(scale):
    logits = torch.randn(3, 2000, generator=torch.Generator().manual_seed(0)) * scale
    kept = filter_top_p(logits, 0.9)
    for row in range(3):  # the written-out definition, by a full sort
        probs, order = torch.softmax(logits[row], -1).sort(descending=True)
        size = int((probs.cumsum(0) < 0.9).sum()) + 1  # first prefix whose mass reaches 0.9
        assert set(kept[row].isfinite().nonzero().flatten().tolist()) == set(order[:size].tolist())
        assert torch.equal(kept[row, order[:size]], logits[row, order[:size]])


def test_sample_from_follows_the_distribution_and_never_draws_zero_probability():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).expand(20000, -1)
    draws = sample_from(probs, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    torch.testing.assert_close(frequencies, probs[0], atol=0.015, rtol=0)
    assert frequencies[1] == 0 and frequencies[4] == 0


@pytest.mark.parametrize(
    "sampling, field",
    [
        (SamplingConfig(-1.0), "temperature"),
        (SamplingConfig(1.0, top_k=-2), "top_k"),
        (SamplingConfig(1.0, top_p=0.0), "top_p"),
    ],
)
def test_impossible_sampling_settings_name_the_field(sampling, field):
    with pytest.raises(ValueError, match=field):
        sampling.validate()


def test_too_long_and_out_of_vocabulary_prompts_are_rejected(make_model):
    model = make_model(max_position_embeddings=64)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        generate(model, [[1] * 60], 10)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate(model, [[5, 1000]], 2)


# ------------------------------------------------------------------ streaming text
def test_stream_decoder_holds_partial_utf8_until_the_character_is_complete():
    tokenizer = get_tokenizer()
    text = "Zoë saw 🦒🐘 and said 你好 — déjà vu."
    tokens = tokenizer.encode(text)
    partial = [t for t in tokens if _invalid_utf8(tokenizer.decode_single_token_bytes(t))]
    assert partial, "the text must contain characters split across tokens"
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(t) for t in tokens] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# ------------------------------------------------------------------ the CLI
@pytest.fixture
def tiny_checkpoint(make_model, tmp_path) -> Path:
    """A small model with the real vocabulary, saved as one of our checkpoints."""
    model = make_model(
        vocab_size=201088, sliding_window=WINDOW, attn_impl="sdpa", moe_impl="grouped"
    )
    return save_checkpoint(tmp_path / "tiny.pt", model)


def test_cli_streams_one_prompt_and_reports_speed(tiny_checkpoint):
    cfg = compose_generate(
        f"checkpoint={tiny_checkpoint}",
        "prompt=Once upon a time",
        "max_new_tokens=12",
        "temperature=0",
        "stop=[]",
    )
    out, err = io.StringIO(), io.StringIO()
    [result] = run(cfg, out, err)
    model, _ = load_with_run_config(tiny_checkpoint, torch.device("cpu"), torch.float32)
    prompt = [ENDOFTEXT_ID, *get_tokenizer().encode("Once upon a time")]
    assert result.tokens == generate(model, [prompt], 12, stop_tokens=()).tokens
    assert out.getvalue() == "Once upon a time" + get_tokenizer().decode(result.tokens[0]) + "\n"
    assert re.search(
        r"prefill 5 tokens in [\d.]+ s \| decode 11 tokens in [\d.]+ s = [\d.]+ tokens/s",
        err.getvalue(),
    )


def test_cli_prints_each_prompt_of_a_file_with_its_continuation(tiny_checkpoint, tmp_path):
    prompts = ["The cat", "One day, a little girl named Lily", "Tom"]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    cfg = compose_generate(
        f"checkpoint={tiny_checkpoint}",
        f"prompts_file={tmp_path / 'prompts.jsonl'}",
        "max_new_tokens=6",
        "batch_size=2",
        "seed=3",
    )
    out = io.StringIO()
    results = run(cfg, out, io.StringIO())
    assert len(results) == 2  # batches of 2 and 1
    text = out.getvalue()
    for index, prompt in enumerate(prompts):
        assert f"--- prompt {index} ---\n{prompt}" in text
    again = io.StringIO()
    run(cfg, again, io.StringIO())
    assert again.getvalue() == text  # seeded


def test_cli_misspelled_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose_generate("checkpoint=x", "temprature=0")


def test_cli_runs_as_a_module_and_leaves_no_output_directory(tiny_checkpoint, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    args = [
        sys.executable,
        "-m",
        "gpt_oss.generate",
        f"checkpoint={tiny_checkpoint}",
        "prompt=Hello",
        "max_new_tokens=5",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Hello") and "tokens/s" in done.stderr
    assert list(work.iterdir()) == []
    missing = subprocess.run(
        args[:3] + ["checkpoint=/nonexistent"], cwd=work, capture_output=True, text=True, env=env
    )
    assert (
        missing.returncode != 0
        and "CheckpointError: no checkpoint at /nonexistent" in missing.stderr
    )


def test_generate_and_evaluate_end_an_input_error_with_its_name_and_message(capsys):
    def bad_dtype(value: str) -> None:
        raise ConfigError(f"dtype={value!r} is invalid")

    with pytest.raises(SystemExit) as ended:
        exit_on_input_error(bad_dtype, "fp8")
    assert ended.value.code == 2  # a usage error, as train's
    assert capsys.readouterr().err == "ConfigError: dtype='fp8' is invalid\n"
    assert exit_on_input_error(lambda x: x + 1, 1) == 2
    with pytest.raises(KeyError):  # a bug is not an input error: its traceback stays
        exit_on_input_error({}.__getitem__, "x")


def write_mxfp4_directory(model, directory: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Export `model`, then replace its expert matrices by random MXFP4 codes as the release
    stores them (blocks (E, out, in/32, 16), scales (E, out, in/32)); returns the dense
    experts those codes mean, in our layout (E, in, out)."""
    export_hf(model, directory)
    tensors = load_file(directory / "model.safetensors")
    generator, dense = torch.Generator().manual_seed(seed), {}
    for key in [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, fan_in, fan_out = tensors.pop(key).shape
        blocks = torch.randint(
            0, 256, (experts, fan_out, fan_in // 32, 16), generator=generator, dtype=torch.uint8
        )
        scales = torch.randint(
            122, 126, (experts, fan_out, fan_in // 32), generator=generator, dtype=torch.uint8
        )
        tensors[f"{key}_blocks"], tensors[f"{key}_scales"] = blocks, scales
        dense[key.removeprefix("model.")] = dequantize_mxfp4(
            blocks, scales, torch.float32
        ).transpose(1, 2)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn"],
    }
    (directory / "config.json").write_text(json.dumps(config))
    return dense


def test_cli_generates_from_an_mxfp4_hugging_face_directory(make_model, tmp_path):
    model = make_model(
        vocab_size=201088, sliding_window=WINDOW, attn_impl="sdpa", moe_impl="grouped"
    )
    dense = write_mxfp4_directory(model, tmp_path / "release")
    with torch.no_grad():
        for name, tensor in dense.items():
            model.get_parameter(name).copy_(tensor)
    cfg = compose_generate(
        f"checkpoint={tmp_path / 'release'}",
        "prompt=Once upon a time",
        "max_new_tokens=10",
        "temperature=0",
        "stream=false",
        "stop=[]",
    )
    [result] = run(cfg, io.StringIO(), io.StringIO())
    prompt = [ENDOFTEXT_ID, *get_tokenizer().encode("Once upon a time")]
    assert result.tokens == generate(model, [prompt], 10, stop_tokens=()).tokens


# ------------------------------------------------------------------ a trained model
PROMPTS = ["Once upon a time", "One day, Tom", "Lily and her mom"]


def continuation_words(checkpoint: Path, tmp_path: Path) -> list[str]:
    """Lower-case words of greedy continuations of PROMPTS. No stop token: the model may start
    a new story, which is as much its corpus as the rest."""
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    cfg = compose_generate(
        f"checkpoint={checkpoint}",
        f"prompts_file={tmp_path / 'prompts.txt'}",
        "max_new_tokens=40",
        "temperature=0",
        "stop=[]",
    )
    out = io.StringIO()
    run(cfg, out, io.StringIO())
    continuations = re.split(r"--- prompt \d+ ---\n", out.getvalue())[1:]
    words = []
    for prompt, text in zip(PROMPTS, continuations, strict=True):
        text = text.removeprefix(prompt).replace("<|endoftext|>", " ")
        words += re.findall(r"[a-z]+", text.lower())
    return words


@pytest.mark.slow
def test_a_briefly_trained_model_continues_with_words_of_its_corpus(tmp_path):
    from gpt_oss.data.synthetic import generate_stories
    from gpt_oss.model.model import GptOss
    from gpt_oss.schema import build
    from gpt_oss.train import run as train

    stories, seed = 2000, 0
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[
            "model=tiny", "data=synthetic", "logger=none", "trainer=cpu",
            f"data.synthetic_train_stories={stories}", f"data.synthetic_seed={seed}",
            "data.synthetic_val_stories=100", f"data.cache_dir={tmp_path / 'cache'}",
            "trainer.max_steps=200", "trainer.batch_size=4", "trainer.seq_len=64",
            "trainer.eval_every=200", "trainer.eval_batches=2", "trainer.checkpoint_every=200",
            "trainer.log_every=100", "trainer.progress=false", "optimizer.lr=1e-2",
        ])  # fmt: skip
    train(cfg, tmp_path / "run")
    texts = [re.findall(r"[a-z]+", story.lower()) for story in generate_stories(stories, seed)]
    corpus = {word for text in texts for word in text}
    corpus_pairs = {pair for text in texts for pair in zip(text, text[1:], strict=False)}

    words = continuation_words(tmp_path / "run", tmp_path)
    unknown = [word for word in words if word not in corpus]
    assert len(words) >= 30 and len(set(words)) >= 6, words
    assert len(unknown) <= 0.1 * len(words), (words, unknown)
    trained_pairs = known_share(words, corpus_pairs)

    # The control: the same shape untrained does not speak the corpus. Its compact vocabulary
    # holds only the corpus's tokens, so even random output is mostly corpus words: the word
    # pairs tell them apart.
    torch.manual_seed(0)
    _, vocabulary, _ = load_with_vocabulary(tmp_path / "run")  # the same shape and vocabulary
    shape = build(cfg)["model_config"]
    shape.vocab_size = vocabulary.size  # null in model=tiny: it follows the data
    untrained = save_checkpoint(
        tmp_path / "untrained.pt", GptOss(shape), vocabulary=vocabulary.to_dict()
    )
    words = continuation_words(untrained, tmp_path)
    untrained_pairs = known_share(words, corpus_pairs)
    assert trained_pairs >= 0.8 and untrained_pairs <= 0.5, (trained_pairs, untrained_pairs, words)


def known_share(words: list[str], pairs: set[tuple[str, str]]) -> float:
    """The share of consecutive word pairs that occur in the corpus."""
    return sum(pair in pairs for pair in zip(words, words[1:], strict=False)) / max(
        len(words) - 1, 1
    )


def test_a_token_that_is_not_one_token_is_named_as_start_or_stop():
    assert encode_prompt("Hi", "<|start|>")[0] == token_id("<|start|>")
    with pytest.raises(ConfigError, match="start token 'Once upon' is not a single token"):
        encode_prompt("Hi", "Once upon")
    with pytest.raises(ConfigError, match="stop token 'the end' is not a single token"):
        token_id("the end")

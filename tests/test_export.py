"""Hugging Face round trip of a trained run: `gpt-oss-export` writes a directory that
AutoTokenizer, AutoModelForCausalLM and pipeline("text-generation") load offline; its tokenizer
encodes exactly as ours and the pipeline's greedy text is `python -m gpt_oss.generate`'s.
`--push-to-hub` goes through huggingface_hub (a local stand-in here), and
`trainer.init_from=<run | checkpoint | Hugging Face dir>` starts a new run from such weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize_parameters
from test_train import compose_run, read_records, tiny_overrides

from gpt_oss.export import main as export_main
from gpt_oss.model.config import ConfigError
from gpt_oss.model.hf import import_hf
from gpt_oss.model.hf_tokenizer import FIRST_SPECIAL_ID
from gpt_oss.model.tokenizer import ENDOFTEXT_ID, VOCAB_SIZE, get_tokenizer
from gpt_oss.model.vocabulary import FullVocabulary
from gpt_oss.train import run
from gpt_oss.training.checkpoint import read_checkpoint, save_checkpoint
from gpt_oss.training.loading import load_model, load_vocabulary
from gpt_oss.training.weights import initialize_from, load_init_weights

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "tinystories_sample.jsonl"
PROMPTS = ["Once upon a time", "One day, Tom", "Lily saw a big dog. She"]
TRICKY = [
    "Hello world! It's 3.14159 -- isn't it?\n\n  Indented\tand tabs\r\nCRLF",
    "Emoji 🐶🎉, accents café naïve, 日本語のテキスト, русский, العربية, 한국어",
    "Specials <|endoftext|> inside <|start|>user<|message|>hi<|end|> and <|reserved_200019|>",
    "   leading spaces and trailing   ",
    "",
]


def stories(count: int) -> list[str]:
    return [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines()[:count]]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny model with o200k's full vocabulary trained for a few steps on 200 real
    TinyStories stories."""
    work = tmp_path_factory.mktemp("trained")
    (work / "stories.jsonl").write_text("".join(SAMPLE.read_text().splitlines(True)[:200]))
    overrides = tiny_overrides(work, "data=text", f"data.train_files=[{work / 'stories.jsonl'}]",
                               "data.vocabulary=full",
                               "data.val_fraction=0.1", "trainer.max_steps=4",
                               "trainer.eval_every=2", "trainer.checkpoint_every=2")  # fmt: skip
    args = [sys.executable, "-m", "gpt_oss.train", *overrides, f"hydra.run.dir={work / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return work / "run"


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-stories"
    assert export_main([str(trained_run), str(out)]) == 0
    return out


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_export_writes_config_weights_tokenizer_generation_config_and_card(exported, trained_run):
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]  # fmt: skip
    config = json.loads((exported / "config.json").read_text())
    assert (
        config["eos_token_id"] == config["bos_token_id"] == config["pad_token_id"] == ENDOFTEXT_ID
    )
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == ENDOFTEXT_ID
    assert (generation["temperature"], generation["top_p"]) == (0.8, 0.95)  # conf/generate.yaml


def test_model_card_holds_architecture_counts_data_tokens_bits_per_byte_and_command(
    exported, trained_run
):
    card = (exported / "README.md").read_text()
    best = read_checkpoint(trained_run / "checkpoints" / "best.pt")
    val = next(
        r for r in read_records(trained_run) if r["split"] == "val" and r["step"] == best["step"]
    )
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert "pipeline_tag: text-generation" in card
    assert "25,864,912 total" in card  # gpt_oss.info.parameter_counts of model=tiny
    assert f"tokens seen: {best['tokens_seen']:,}" in card
    assert f"{val['bpb']:.4f} bits per byte" in card
    assert "stories.jsonl" in card  # the training data
    assert re.search(r"python -m gpt_oss\.train model=tiny .*trainer\.max_steps=4", card)
    assert "lm_eval --model hf" in card


def test_auto_tokenizer_encodes_text_exactly_as_ours(exported, offline):
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ours = get_tokenizer()
    for text in stories(300) + TRICKY:
        ids = ours.encode(text, allowed_special="all")
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
        assert tokenizer(text)["input_ids"] == [ENDOFTEXT_ID, *ids]  # BOS, as generate's start
        assert tokenizer.decode(ids) == ours.decode(ids)


def test_special_tokens_are_mapped_by_id(exported, offline):
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ours = get_tokenizer()
    assert len(tokenizer) == VOCAB_SIZE
    for token_id in range(FIRST_SPECIAL_ID, VOCAB_SIZE):  # 200018 has two names in o200k_harmony
        name = ours.decode_single_token_bytes(token_id).decode()
        assert tokenizer.convert_ids_to_tokens(token_id) == name
        assert tokenizer(name, add_special_tokens=False)["input_ids"] == [token_id]
    assert tokenizer.convert_tokens_to_ids(["<|return|>", "<|reserved_201087|>"]) == [
        200002,
        201087,
    ]


def test_auto_model_loads_the_export_with_our_logits(exported, trained_run, offline):
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        exported, dtype=torch.float32, attn_implementation="eager").eval()  # fmt: skip
    ours = load_model(trained_run, attn_impl="eager", moe_impl="loop")
    ids = torch.tensor([[ENDOFTEXT_ID, *get_tokenizer().encode(stories(1)[0])[:60]]])
    with torch.no_grad():
        expected, actual = ours(ids), theirs(ids).logits
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-5


def our_generate_cli(checkpoint: Path, work: Path, new_tokens: int) -> list[str]:
    """`python -m gpt_oss.generate`'s greedy text (prompt + continuation) for each of PROMPTS."""
    (work / "prompts.txt").write_text("\n".join(PROMPTS))
    args = [sys.executable, "-m", "gpt_oss.generate", f"checkpoint={checkpoint}", "temperature=0",
            f"prompts_file={work / 'prompts.txt'}", f"max_new_tokens={new_tokens}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    texts = re.split(r"--- prompt \d+ ---\n", done.stdout)[1:]
    return [text.removesuffix("\n") for text in texts]


def pipeline_texts(directory: Path, new_tokens: int) -> list[str]:
    generator = transformers.pipeline("text-generation", model=str(directory), dtype=torch.float32)
    results = generator(PROMPTS, max_new_tokens=new_tokens, do_sample=False)
    return [result[0]["generated_text"] for result in results]


def test_pipeline_generates_the_greedy_text_of_our_generate(
    exported, trained_run, tmp_path, offline
):
    assert pipeline_texts(exported, 24) == our_generate_cli(trained_run, tmp_path, 24)


def test_pipeline_equals_our_generate_on_a_model_with_varied_output(trained_run, tmp_path, offline):
    """The briefly trained model repeats a few tokens; the same shape with unit-scale random
    weights continues every prompt differently, so every token of the wiring is compared."""
    model = randomize_parameters(load_model(trained_run), seed=1)
    checkpoint = save_checkpoint(tmp_path / "varied.pt", model)
    assert export_main([str(checkpoint), str(tmp_path / "varied")]) == 0
    ours = our_generate_cli(checkpoint, tmp_path, 16)
    continuations = {text.removeprefix(prompt) for text, prompt in zip(ours, PROMPTS, strict=True)}
    assert len(continuations) == len(PROMPTS) and all(len(t) > 20 for t in continuations)
    assert pipeline_texts(tmp_path / "varied", 16) == ours


class StandInHubApi:
    """Records what the export asks of huggingface_hub.HfApi, as the Hub would receive it."""

    calls: list[tuple[str, dict]] = []
    fail: Exception | None = None

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        if self.fail:
            raise self.fail
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        return "https://huggingface.co/me/tiny-stories/commit/0"


def test_push_to_hub_creates_the_repo_and_uploads_the_whole_export(
    trained_run, tmp_path, monkeypatch
):
    monkeypatch.setattr("huggingface_hub.HfApi", StandInHubApi)
    StandInHubApi.calls, StandInHubApi.fail = [], None
    out = tmp_path / "tiny-stories"
    assert (
        export_main([str(trained_run), str(out), "--push-to-hub", "me/tiny-stories", "--private"])
        == 0
    )
    (create, repo), (upload, folder) = StandInHubApi.calls
    assert create == "create_repo" and repo["repo_id"] == "me/tiny-stories" and repo["private"]
    assert upload == "upload_folder" and folder["repo_id"] == "me/tiny-stories"
    assert (
        folder["files"] == sorted(p.name for p in out.iterdir())
        and "tokenizer.json" in folder["files"]
    )
    assert 'model="me/tiny-stories"' in (out / "README.md").read_text()  # the card names the repo


def test_a_failed_push_keeps_the_export_and_says_how_to_upload_it(
    trained_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("huggingface_hub.HfApi", StandInHubApi)
    StandInHubApi.calls, StandInHubApi.fail = [], ConnectionError("no network")
    out = tmp_path / "export"
    assert export_main([str(trained_run), str(out), "--push-to-hub", "me/x"]) == 1
    assert "no network" in capsys.readouterr().err and (out / "model.safetensors").is_file()


def test_export_refuses_a_non_empty_directory_and_a_missing_source(trained_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert export_main([str(trained_run), str(tmp_path / "taken")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    assert export_main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sharded_run_exports_its_consolidated_weights(tmp_path):
    steps = ["trainer.max_steps=2", "trainer.seq_len=32", "trainer.eval_every=2",
             "trainer.checkpoint_every=2", "trainer.parallel=fsdp"]  # fmt: skip
    run(compose_run(*tiny_overrides(tmp_path, *steps)), tmp_path / "fsdp")  # a group of one
    assert (tmp_path / "fsdp" / "checkpoints" / "best" / ".metadata").is_file()
    assert export_main([str(tmp_path / "fsdp"), str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "steps: 2" in card and "bits per byte" in card
    from gpt_oss.training.checkpoint_sharded import consolidate

    expected, _ = consolidate(tmp_path / "fsdp" / "checkpoints" / "best")
    ids = torch.randint(0, expected.config.vocab_size, (1, 12))  # a compact vocabulary
    assert (tmp_path / "hf" / "compact_vocabulary.json").is_file()
    torch.testing.assert_close(import_hf(tmp_path / "hf")(ids), expected(ids))


# ------------------------------------------------------------------ trainer.init_from
@pytest.mark.parametrize("source", ["run", "best.pt", "export"])
def test_init_from_loads_the_weights_of_a_run_a_checkpoint_or_an_export(
    source, trained_run, exported
):
    path = {"run": trained_run, "best.pt": trained_run / "checkpoints" / "best.pt",
            "export": exported}[source]  # fmt: skip
    target = load_model(trained_run)
    config = target.config
    weights = load_init_weights(config, str(path), FullVocabulary())
    fresh = type(target)(config)
    record = initialize_from(fresh, weights)
    for name, tensor in target.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert record["step"] == (None if source == "export" else 4)


def test_init_from_refuses_another_shape_naming_both_shapes(trained_run, tmp_path):
    cfg = compose_run(
        *tiny_overrides(tmp_path, f"trainer.init_from={trained_run}", "model.hidden_size=32")
    )
    with pytest.raises(
        ConfigError,
        match=r"embed_tokens\.weight: \(201088, 32\) in this model, \(201088, 64\) there",
    ):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # refused before any data preparation


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_those_weights(trained_run, exported, tmp_path):
    start = load_model(trained_run).state_dict()  # best.pt: what init_from of the run reads
    # Another seed than the trained run's, so a run that ignored init_from would start elsewhere;
    # AdamW moves each weight by about lr a step, so these runs stay next to where they start.
    settings = [
        "data.vocabulary=full",  # the trained run's
        "trainer.seed=7",
        "trainer.max_steps=2",
        "optimizer.lr=1e-6",
        "trainer.checkpoint_every=2",
    ]
    for source in (trained_run, exported):
        run_dir = tmp_path / source.name
        run(
            compose_run(*tiny_overrides(tmp_path, f"trainer.init_from={source}", *settings)),
            run_dir,
        )
        assert [r["step"] for r in read_records(run_dir) if r["split"] == "train"][
            0
        ] == 1  # a new run
        last = read_checkpoint(run_dir / "checkpoints" / "last.pt")
        assert last["run_config"]["trainer"]["init_from"] == str(source)
        assert last["run_config"]["init_from"]["checkpoint"].startswith(str(source))
        drift = max((last["model"][k] - start[k]).abs().max().item() for k in start)
        assert drift < 1e-4, drift
    run(compose_run(*tiny_overrides(tmp_path, *settings)), tmp_path / "fresh")  # the control
    fresh = read_checkpoint(tmp_path / "fresh" / "checkpoints" / "last.pt")["model"]
    assert max((fresh[k] - start[k]).abs().max().item() for k in start) > 0.05


# ------------------------------------------------------------------ a compact vocabulary
@pytest.fixture(scope="module")
def compact_run(tmp_path_factory) -> Path:
    """A tiny model on the compact 8,192-id vocabulary of 200 real stories (the default)."""
    work = tmp_path_factory.mktemp("compact")
    (work / "stories.jsonl").write_text("".join(SAMPLE.read_text().splitlines(True)[:200]))
    overrides = tiny_overrides(work, "data=text", f"data.train_files=[{work / 'stories.jsonl'}]",
                               "data.val_fraction=0.1", "trainer.max_steps=2",
                               "trainer.eval_every=2", "trainer.checkpoint_every=2")  # fmt: skip
    run(compose_run(*overrides), work / "run")
    return work / "run"


@pytest.fixture(scope="module")
def compact_export(compact_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compact-export") / "tiny-compact"
    assert export_main([str(compact_run), str(out)]) == 0
    return out


def test_a_compact_export_holds_its_map_and_its_own_special_ids(compact_export, compact_run):
    vocabulary = load_vocabulary(compact_run)
    assert vocabulary.kind == "compact" and vocabulary.size == 8192
    assert load_vocabulary(compact_export) == vocabulary  # compact_vocabulary.json
    config = json.loads((compact_export / "config.json").read_text())
    generation = json.loads((compact_export / "generation_config.json").read_text())
    assert config["vocab_size"] == 8192
    assert config["eos_token_id"] == generation["eos_token_id"] == vocabulary.endoftext_id
    assert "a compact subset of o200k_harmony" in (compact_export / "README.md").read_text()


def test_compact_tokenizer_gives_our_ids_for_kept_tokens_and_out_of_range_ids_otherwise(
    compact_export, compact_run, offline
):
    tokenizer = transformers.AutoTokenizer.from_pretrained(compact_export)
    vocabulary, ours = load_vocabulary(compact_run), get_tokenizer()
    kept = spelled = 0
    for text in stories(300) + TRICKY[:2]:
        o200k = ours.encode(text, allowed_special="all")
        theirs = tokenizer(text, add_special_tokens=False)["input_ids"]
        if vocabulary.contains(o200k).all():
            kept += 1
            assert theirs == vocabulary.encode(text, allowed_special="all"), text
            assert tokenizer(text)["input_ids"] == [vocabulary.endoftext_id, *theirs]
            assert tokenizer.decode(theirs) == vocabulary.decode(theirs)
        else:  # one id per o200k token; those the vocabulary spells fall outside the model
            spelled += 1
            outside = [
                i for i, t in zip(theirs, o200k, strict=True) if not vocabulary.contains([t])[0]
            ]
            assert len(theirs) == len(o200k) and outside and min(outside) >= vocabulary.size
    assert kept >= 100 and spelled >= 2  # both kinds of text were seen


def test_compact_export_loads_with_our_logits_and_the_pipeline_generates_our_text(
    compact_export, compact_run, tmp_path, offline
):
    vocabulary = load_vocabulary(compact_run)
    for prompt in PROMPTS:  # the pipeline's prompts must be made of kept tokens
        assert vocabulary.contains(get_tokenizer().encode(prompt)).all(), prompt
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        compact_export, dtype=torch.float32, attn_implementation="eager").eval()  # fmt: skip
    ours = load_model(compact_run, attn_impl="eager", moe_impl="loop")
    ids = torch.tensor([[vocabulary.endoftext_id, *vocabulary.encode(stories(1)[0])[:60]]])
    with torch.no_grad():
        expected, actual = ours(ids), theirs(ids).logits
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-5
    assert pipeline_texts(compact_export, 24) == our_generate_cli(compact_run, tmp_path, 24)


def test_init_from_refuses_weights_of_another_vocabulary_naming_both(compact_run, tmp_path):
    """The same 8,192 ids built from other data mean other tokens: refused once the data is
    prepared, before a step is taken."""
    overrides = tiny_overrides(tmp_path, f"trainer.init_from={compact_run}", "data.vocab_size=8192")
    with pytest.raises(
        ConfigError,
        match=r"vocabulary CompactVocabulary\(size=8192.*"
        r"this run's data gives CompactVocabulary\(size=8192",
    ):
        run(compose_run(*overrides), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()

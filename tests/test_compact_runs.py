"""The compact vocabulary through the whole product, on real TinyStories text: prepared token
files carry the map, a tiny model trains on it, and the map survives checkpoint -> load_model ->
generate -> evaluate -> export_hf -> transformers; bits per byte agree between evaluate and
training validation; a vocab size that disagrees with the data is refused before any work."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gpt_oss.data.compact import compact_directory
from gpt_oss.data.config import DataConfig, DataError
from gpt_oss.data.prepare import prepare
from gpt_oss.data.tokens import TokenFile
from gpt_oss.evaluate import run as evaluate
from gpt_oss.generate import run as generate_cli
from gpt_oss.model.config import ConfigError
from gpt_oss.model.hf import export_hf
from gpt_oss.model.sampling import generate
from gpt_oss.model.tokenizer import get_tokenizer
from gpt_oss.model.vocabulary import CompactVocabulary, FullVocabulary
from gpt_oss.train import run as train
from gpt_oss.training.checkpoint import CheckpointError, read_checkpoint
from gpt_oss.training.loading import load_model, load_vocabulary

ROOT = Path(__file__).resolve().parents[1]
# Held-out documents the training split never saw: other scripts and emoji, so that many of
# their tokens are spelled by bytes in the compact vocabulary (and a wrong byte count would show).
FOREIGN = [
    "Жила-была маленькая девочка. Она любила играть в парке со своей собакой.",
    "从前有一个小女孩。她喜欢在公园里和她的狗一起玩。🐶🌳",
    "Había una vez un dragón 🐉 que quería ser panadero en Zaragoza.",
]
VOCAB_SIZE = 2048  # below the ~2.5k ids 400 stories use: the cap binds


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def story_files(tinystories_sample, tmp_path_factory) -> dict[str, Path]:
    """400 real stories to train on; 30 others and FOREIGN held out."""
    with open(tinystories_sample) as handle:
        texts = [json.loads(next(handle))["text"] for _ in range(430)]
    folder = tmp_path_factory.mktemp("stories")
    files = {"train": folder / "train.jsonl", "val": folder / "val.jsonl"}
    for split, documents in (("train", texts[:400]), ("val", texts[400:] + FOREIGN)):
        files[split].write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return files


def run_overrides(files: dict[str, Path], cache: Path, *extra: str) -> list[str]:
    return [
        "model=tiny", "data=text", "logger=none", "trainer=cpu",
        f"data.train_files=[{files['train']}]", f"data.val_files=[{files['val']}]",
        f"data.cache_dir={cache}", "data.num_proc=1", f"data.vocab_size={VOCAB_SIZE}",
        "trainer.max_steps=12", "trainer.batch_size=4", "trainer.seq_len=64",
        "trainer.eval_every=12", "trainer.eval_batches=1000", "trainer.checkpoint_every=12",
        "trainer.log_every=4", "trainer.progress=false", "optimizer.lr=3e-3", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(story_files, tmp_path_factory) -> dict:
    """One short training run on the compact vocabulary, shared by the tests below."""
    root = tmp_path_factory.mktemp("compact_run")
    cache, run_dir = root / "cache", root / "run"
    summary = train(compose_config("config", *run_overrides(story_files, cache)), run_dir)
    data = DataConfig(
        source="files", name="text", train_files=[str(story_files["train"])],
        val_files=[str(story_files["val"])], cache_dir=str(cache), num_proc=1,
        vocabulary="compact", vocab_size=VOCAB_SIZE,
    )  # fmt: skip
    return {"run_dir": run_dir, "summary": summary, "prepared": prepare(data, progress=False)}


@pytest.mark.usefixtures("single_threaded")
def test_the_map_survives_prepare_train_checkpoint_load_generate_evaluate_export(
    trained, story_files, tmp_path
):
    transformers = pytest.importorskip("transformers")
    run_dir, prepared = trained["run_dir"], trained["prepared"]
    vocabulary = prepared.vocabulary  # the map prepare stored in the token files' metadata
    assert isinstance(vocabulary, CompactVocabulary) and vocabulary.size == VOCAB_SIZE
    assert prepared.train.path.parent == compact_directory(prepared.directory, VOCAB_SIZE)
    # the run recorded what auto and null resolved to
    recorded = OmegaConf.load(run_dir / "config.yaml")
    assert recorded.model.vocab_size == VOCAB_SIZE and recorded.data.vocabulary == "compact"
    assert recorded.data_prepared.vocabulary_sha256 == vocabulary.sha256
    for name in ("best.pt", "last.pt"):  # every checkpoint carries the map
        assert read_checkpoint(run_dir / "checkpoints" / name)["vocabulary"] == vocabulary.to_dict()

    model = load_model(run_dir)
    assert model.config.vocab_size == VOCAB_SIZE and load_vocabulary(run_dir) == vocabulary

    # generate encodes the prompt and decodes the output in the compact vocabulary
    cfg = compose_config(
        "generate", f"checkpoint={run_dir}", "prompt=Once upon a time", "max_new_tokens=16",
        "temperature=0", "stop=[]",
    )  # fmt: skip
    out = io.StringIO()
    (result,) = generate_cli(cfg, out, io.StringIO())
    prompt = [vocabulary.endoftext_id, *vocabulary.encode("Once upon a time")]
    expected = generate(model, [prompt], 16, stop_tokens=())
    assert result.tokens == expected.tokens and result.prompt_tokens == len(prompt)
    assert out.getvalue() == "Once upon a time" + vocabulary.decode(result.tokens[0]) + "\n"

    # evaluate scores the held-out text in the compact vocabulary, per UTF-8 byte
    cfg = compose_config(
        "evaluate", f"checkpoint={run_dir}", f"text_file={story_files['val']}",
        "context_length=64", "stride=64",
    )  # fmt: skip
    with redirect_stdout(io.StringIO()):
        score = evaluate(cfg)
    o200k_tokens = sum(len(get_tokenizer().encode_ordinary(d)) + 1 for d in read_val(story_files))
    assert score.tokens > o200k_tokens  # FOREIGN's unseen tokens are spelled by their bytes
    assert (
        score.bytes == prepared.val.num_bytes == sum(len(d.encode()) for d in read_val(story_files))
    )

    # export: transformers loads vocab_size = the compact size and gives the same logits
    directory = export_hf(model, tmp_path / "hf", vocabulary=load_vocabulary(run_dir))
    reference = transformers.GptOssForCausalLM.from_pretrained(
        directory, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32
    ).eval()
    assert reference.config.vocab_size == VOCAB_SIZE
    ids = torch.tensor([vocabulary.encode(FOREIGN[1] + " Once upon a time, Lily")])
    with torch.no_grad():
        theirs, ours = reference(ids).logits, model(ids)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-4
    assert load_vocabulary(directory) == vocabulary


def read_val(story_files: dict[str, Path]) -> list[str]:
    return [json.loads(line)["text"] for line in story_files["val"].read_text().splitlines()]


def test_bits_per_byte_agree_between_evaluate_and_training_validation(trained, story_files):
    """The same model on the same held-out text: training validation (windows over the token
    stream, bytes per token of the split) and evaluate (document by document, exact bytes)
    differ only in where context restarts, so they agree closely (measured: 3.1524 and 3.1527);
    dividing by anything but the text's UTF-8 bytes would put them far apart: the held-out
    split has 49% more compact tokens than o200k tokens (the 2048-id cap spells many of them by
    bytes, FOREIGN most) and ~3 bytes per compact token."""
    records = [json.loads(line) for line in (trained["run_dir"] / "metrics.jsonl").open()]
    training = [r for r in records if r["split"] == "val"][-1]["bpb"]
    cfg = compose_config(
        "evaluate", f"checkpoint={trained['run_dir'] / 'checkpoints' / 'last.pt'}",
        f"text_file={story_files['val']}", "context_length=64", "stride=64",
    )  # fmt: skip
    with redirect_stdout(io.StringIO()):
        score = evaluate(cfg)
    assert math.isclose(score.bits_per_byte, training, rel_tol=0.003), (
        score.bits_per_byte,
        training,
    )
    val = trained["prepared"].val
    assert score.tokens == len(val) > 1.3 * val.metadata["o200k_num_tokens"]  # spelled ones too


def test_a_stated_vocab_size_that_disagrees_is_refused_before_any_work(story_files, tmp_path):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    for extra, message in (
        (["model.vocab_size=5000"],
         r"model.vocab_size=5000 disagrees with the data's vocabulary of 2048 ids"),
        (["model.vocab_size=201088", "data.vocabulary=compact"],
         r"model.vocab_size=201088 disagrees .* of 2048 ids"),
    ):  # fmt: skip
        cfg = compose_config("config", *run_overrides(story_files, cache, *extra))
        with pytest.raises(ConfigError, match=message):
            train(cfg, run_dir)
        assert not cache.exists() and not run_dir.exists()  # nothing prepared, nothing written
    # data.vocab_size=null: the size is known once the training split is counted; the run
    # stops right there, before a model is built or anything is written to the run directory
    extra = ["data.vocab_size=null", "model.vocab_size=5000"]
    cfg = compose_config("config", *run_overrides(story_files, cache, *extra))
    with pytest.raises(
        ConfigError,
        match=r"model.vocab_size=5000 disagrees .* of \d+ ids "
        r"\(data.vocabulary=compact, data.vocab_size=null\)",
    ):
        train(cfg, run_dir)
    assert not run_dir.exists()


def test_model_full_and_the_120b_keep_the_full_vocabulary():
    from gpt_oss.schema import build

    for model in ("full", "gpt_oss_120b"):
        parts = build(compose_config("config", f"model={model}"))
        assert parts["model_config"].vocab_size == 201088
        assert parts["data_config"].vocabulary == "full"
    tiny = build(compose_config("config", "model=tiny", "data.vocabulary=full"))
    assert tiny["model_config"].vocab_size == 201088  # one override away


def test_resuming_with_another_vocabulary_is_refused(trained, story_files, tmp_path):
    other = tmp_path / "other.jsonl"  # another training text: the same size, another map
    texts = [json.loads(line)["text"] for line in story_files["val"].read_text().splitlines()]
    other.write_text("".join(json.dumps({"text": t + " Zyx!"}) + "\n" for t in texts * 8))
    files = {"train": other, "val": story_files["val"]}
    cfg = compose_config(
        "config",
        # more steps: a resume of a run that already finished trains nothing and says so
        *run_overrides(
            files,
            tmp_path / "cache",
            f"trainer.resume={trained['run_dir']}",
            "trainer.max_steps=16",
        ),
    )
    with pytest.raises(CheckpointError, match="another vocabulary"):
        train(cfg, tmp_path / "run")


# --- the compact token files ----------------------------------------------------------------


def compact_config(files: dict[str, Path], cache: Path, **overrides) -> DataConfig:
    values = dict(
        source="files", name="text", train_files=[str(files["train"])],
        val_files=[str(files["val"])], cache_dir=str(cache), num_proc=1, vocabulary="compact",
    )  # fmt: skip
    return DataConfig(**(values | overrides))


def test_compact_files_hold_the_same_text_as_the_o200k_files(story_files, tmp_path):
    prepared = prepare(compact_config(story_files, tmp_path), progress=False)
    vocabulary = prepared.vocabulary
    for split in ("train", "val"):
        compact = getattr(prepared, split)
        o200k = TokenFile.open(prepared.directory / f"{split}.bin")
        assert compact.metadata["vocabulary"] == vocabulary.to_dict()
        assert compact.num_bytes == o200k.num_bytes and compact.num_documents == o200k.num_documents
        assert vocabulary.decode_bytes(compact.tokens) == get_tokenizer().decode_bytes(
            o200k.tokens.tolist()
        )
        starts = np.flatnonzero(np.asarray(compact.tokens) == vocabulary.endoftext_id)
        assert len(starts) == compact.num_documents and starts[0] == 0
    assert (
        len(prepared.train) == prepared.train.metadata["o200k_num_tokens"]
    )  # null: nothing spelled
    assert prepared.summary()["vocab_size"] == vocabulary.size


def test_compact_files_are_reused_remapped_when_stale_and_refused_when_damaged(
    story_files, tmp_path
):
    config = compact_config(story_files, tmp_path, vocab_size=1024)
    first = prepare(config, progress=False)
    stamp = first.train.path.stat().st_mtime_ns
    again = prepare(config, progress=False)
    assert again.train.path.stat().st_mtime_ns == stamp and again.vocabulary == first.vocabulary
    assert (
        prepare(compact_config(story_files, tmp_path, vocabulary="full"), progress=False).vocabulary
        == FullVocabulary()
    )

    meta_path = first.train.path.with_suffix(".json")
    metadata = json.loads(meta_path.read_text())
    meta_path.write_text(
        json.dumps(metadata | {"o200k_sha256": "0" * 64})
    )  # mapped from another split
    assert prepare(config, progress=False).vocabulary == first.vocabulary  # mapped again
    assert first.train.path.stat().st_mtime_ns != stamp

    metadata = json.loads(meta_path.read_text())
    metadata["vocabulary"]["o200k_ids"][-2] += 1  # a damaged map
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(  # the metadata's own checksum (issue 14.2) sees the edit first
        DataError,
        match=r"train.json (was edited or is corrupt|: compact vocabulary checksum mismatch)"
        r".*Delete",
    ):
        prepare(config, progress=False)


def test_a_compact_vocabulary_too_small_for_the_bytes_is_refused_at_once(story_files, tmp_path):
    with pytest.raises(DataError, match=r"data.vocab_size=100 is invalid: .*\[257, 201088\]"):
        compact_config(story_files, tmp_path, vocab_size=100)
    with pytest.raises(
        DataError, match="data.vocabulary='tiny' is invalid: must be one of auto, compact, full"
    ):
        compact_config(story_files, tmp_path, vocabulary="tiny")
    with pytest.raises(DataError, match="data.vocabulary=auto is resolved against the model"):
        prepare(compact_config(story_files, tmp_path, vocabulary="auto"))
    assert not list(tmp_path.iterdir())  # refused before anything was written

"""Data pipeline: sources -> uint32 token files (cached, checked) -> loaders; the synthetic corpus;
the offline fallback. Every cache lives under tmp_path, never the repository's data/."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gpt_oss.data import prepare as prepare_module
from gpt_oss.data.config import DataConfig, DataError
from gpt_oss.data.hub import hub_unreachable_reason
from gpt_oss.data.loaders import TrainLoader, ValLoader
from gpt_oss.data.prepare import prepare
from gpt_oss.data.synthetic import (
    BOY_NAMES,
    GIRL_NAMES,
    OBJECTS,
    PLACES,
    generate_stories,
    generate_story,
)
from gpt_oss.data.tokens import TokenFile, encode_documents
from gpt_oss.files import sha256_file
from gpt_oss.model.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, get_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "tinystories_sample.jsonl"
FALLBACK_STORIES = [
    "Once upon a time, there was a little girl named Lily. She loved to play in the park.",
    'One day, Tom saw a big red ball. "Can I play?" he asked.\nHis mom smiled and said yes.',
    "The cat sat on the mat. It was warm and happy. The end.",
] * 40


@pytest.fixture(scope="module")
def stories() -> list[str]:
    """300 real TinyStories stories when the shared sample is present, else written ones."""
    if SAMPLE.is_file():
        with open(SAMPLE) as handle:
            return [json.loads(next(handle))["text"] for _ in range(300)]
    return FALLBACK_STORIES


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text(
        "".join(json.dumps({field: text, "id": i}) + "\n" for i, text in enumerate(texts))
    )
    return path


def files_config(
    tmp_path: Path, train: list[Path], val: list[Path] = (), **overrides
) -> DataConfig:
    values = {
        "source": "files",
        "name": "text",
        "train_files": [str(path) for path in train],
        "val_files": [str(path) for path in val],
        "cache_dir": str(tmp_path / "cache"),
        "num_proc": 1,
    }
    return DataConfig(**(values | overrides))


def synthetic_config(tmp_path: Path, **overrides) -> DataConfig:
    values = {
        "source": "synthetic",
        "name": "synthetic",
        "synthetic_train_stories": 300,
        "synthetic_val_stories": 40,
        "cache_dir": str(tmp_path / "cache"),
        "num_proc": 1,
    }
    return DataConfig(**(values | overrides))


def decoded_documents(file: TokenFile) -> list[str]:
    """The documents of a token file: <|endoftext|> opens each one."""
    tokens = np.asarray(file.tokens)
    assert tokens[0] == ENDOFTEXT_ID, "every file starts with the first document's <|endoftext|>"
    starts = np.flatnonzero(tokens == ENDOFTEXT_ID)
    ends = list(starts[1:]) + [len(tokens)]
    return [
        get_tokenizer().decode(tokens[s + 1 : e].tolist())
        for s, e in zip(starts, ends, strict=True)
    ]


# ----------------------------------------------------------------------------------------------
# Preparation from local files, through the datasets library


def test_jsonl_tokens_decode_back_to_the_documents(tmp_path, stories):
    train = write_jsonl(tmp_path / "train.jsonl", stories[:250])
    val = write_jsonl(tmp_path / "val.jsonl", stories[250:])
    prepared = prepare(files_config(tmp_path, [train], [val]), progress=False)
    assert decoded_documents(prepared.train) == stories[:250]
    assert decoded_documents(prepared.val) == stories[250:]
    assert prepared.train.num_documents == 250
    assert prepared.train.num_bytes == sum(len(s.encode()) for s in stories[:250])
    assert prepared.train.tokens.dtype == np.uint32
    assert prepared.train.path.stat().st_size == 4 * len(prepared.train)
    assert prepared.fallback is None and prepared.source == "files"
    metadata = prepared.train.metadata
    assert metadata["tokenizer"] == "o200k_harmony" and metadata["vocab_size"] == 201088
    assert metadata["sha256"] == sha256_file(prepared.train.path)
    assert prepared.directory.parent == tmp_path / "cache"


def test_txt_split_on_a_separator(tmp_path, stories):
    # TinyStoriesV2's layout: stories separated by "<|endoftext|>" on its own line.
    path = tmp_path / "stories.txt"
    path.write_text(f"\n{ENDOFTEXT}\n".join(stories[:60]) + f"\n{ENDOFTEXT}\n")
    config = files_config(tmp_path, [path], separator=ENDOFTEXT, val_fraction=0.1)
    prepared = prepare(config, progress=False)
    documents = decoded_documents(prepared.train) + decoded_documents(prepared.val)
    assert documents == [story.strip() for story in stories[:60]]
    assert prepared.val.num_documents == 6  # the last 10%, deterministically


def test_txt_without_separator_is_one_document_per_line(tmp_path):
    lines = ["The sun was warm.", "", "A dog ran to the park.", "Mia found a shell."]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    prepared = prepare(files_config(tmp_path, [path], [path]), progress=False)
    assert decoded_documents(prepared.train) == [line for line in lines if line]


def test_parquet_with_a_custom_text_field(tmp_path, stories):
    path = tmp_path / "stories.parquet"
    pq.write_table(pa.table({"story": stories[:80], "n": list(range(80))}), path)
    prepared = prepare(files_config(tmp_path, [path], [path], text_field="story"), progress=False)
    assert decoded_documents(prepared.train) == stories[:80]


def test_several_files_are_read_in_order(tmp_path, stories):
    first = write_jsonl(tmp_path / "a.jsonl", stories[:30])
    second = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": stories[30:50]}), second)
    prepared = prepare(files_config(tmp_path, [first, second], [first]), progress=False)
    assert decoded_documents(prepared.train) == stories[:50]


def test_token_ids_above_65535_survive_the_round_trip(tmp_path):
    texts = ["Ünïcödé 日本語のテキスト, emoji 🦄🚀 and Ελληνικά.", "Привет, мир! Кошка спит."]
    path = write_jsonl(tmp_path / "u.jsonl", texts)
    prepared = prepare(files_config(tmp_path, [path], [path]), progress=False)
    tokens = np.asarray(prepared.train.tokens)
    assert (tokens[tokens != ENDOFTEXT_ID] > 65535).any(), (
        "the test text must use ids beyond uint16"
    )
    assert decoded_documents(prepared.train) == texts


def test_a_literal_endoftext_in_a_story_is_text_not_a_separator():
    tokens, documents, _ = encode_documents([f"before {ENDOFTEXT} after", "second"])
    assert documents == 2
    assert (tokens == ENDOFTEXT_ID).sum() == 2  # only the two we put before each document


def test_lone_surrogates_are_replaced_like_tiktoken_does():
    tokens, documents, num_bytes = encode_documents(["bad \ud800 text"])
    assert documents == 1 and num_bytes == len("bad \ufffd text".encode())
    assert get_tokenizer().decode(tokens[1:].tolist()) == "bad \ufffd text"


def test_two_processes_write_the_same_file_as_one(tmp_path):
    one = prepare(
        synthetic_config(tmp_path / "a", num_proc=1, synthetic_train_stories=2100), progress=False
    )
    two = prepare(
        synthetic_config(tmp_path / "b", num_proc=2, synthetic_train_stories=2100), progress=False
    )
    assert one.train.metadata["sha256"] == two.train.metadata["sha256"]
    assert one.train.num_documents == 2100


# ----------------------------------------------------------------------------------------------
# The cache: reuse, staleness, damage


def test_a_second_prepare_reuses_the_files(tmp_path, stories):
    config = files_config(tmp_path, [write_jsonl(tmp_path / "t.jsonl", stories[:50])])
    first = prepare(config, progress=False)
    assert first.prepared_splits == ("train", "val")
    mtime = first.train.path.stat().st_mtime_ns
    second = prepare(config, progress=False)
    assert second.prepared_splits == ()
    assert second.train.path.stat().st_mtime_ns == mtime
    assert second.train.metadata == first.train.metadata


def test_max_train_documents_keeps_the_first_train_documents_and_the_same_held_out_ones(
    tmp_path, stories
):
    path = write_jsonl(tmp_path / "t.jsonl", stories[:100])
    whole = prepare(files_config(tmp_path, [path], val_fraction=0.1), progress=False)
    capped = prepare(
        files_config(tmp_path, [path], val_fraction=0.1, max_train_documents=30), progress=False
    )
    assert decoded_documents(capped.train) == stories[:30]
    # held out before the cap: the validation text is the same, and never trained on
    assert decoded_documents(capped.val) == decoded_documents(whole.val) == stories[90:100]
    assert capped.fingerprint != whole.fingerprint and capped.prepared_splits == ("train", "val")
    assert "first 30 train documents" in capped.description
    assert capped.train.metadata["source_identity"]["max_train_documents"] == 30
    assert "max_train_documents" not in whole.train.metadata["source_identity"], (
        "uncapped fingerprints stay as they were, so existing caches remain valid"
    )


def test_max_train_documents_with_val_files_and_above_the_corpus_size(tmp_path, stories):
    train = write_jsonl(tmp_path / "train.jsonl", stories[:40])
    val = write_jsonl(tmp_path / "val.jsonl", stories[40:50])
    fingerprints = set()
    for cap, expected in ((25, stories[:25]), (26, stories[:26]), (1000, stories[:40])):
        config = files_config(tmp_path, [train], [val], max_train_documents=cap)
        prepared = prepare(config, progress=False)
        assert decoded_documents(prepared.train) == expected, cap
        assert decoded_documents(prepared.val) == stories[40:50], cap
        fingerprints.add(prepared.fingerprint)
    assert len(fingerprints) == 3, "each cap is its own cache, never another cap's"


def test_a_changed_input_file_prepares_again(tmp_path, stories):
    path = write_jsonl(tmp_path / "t.jsonl", stories[:40])
    first = prepare(files_config(tmp_path, [path]), progress=False)
    write_jsonl(path, stories[40:90])
    second = prepare(files_config(tmp_path, [path]), progress=False)
    assert second.fingerprint != first.fingerprint and second.prepared_splits == ("train", "val")
    assert decoded_documents(second.train) + decoded_documents(second.val) == stories[40:90]


def test_a_changed_tokenizer_in_the_metadata_prepares_again(tmp_path):
    config = synthetic_config(tmp_path)
    first = prepare(config, progress=False)
    meta_path = first.train.path.with_suffix(".json")
    meta_path.write_text(json.dumps(first.train.metadata | {"tokenizer": "cl100k_base"}))
    again = prepare(config, progress=False)
    assert again.prepared_splits == ("train",)
    assert json.loads(meta_path.read_text())["tokenizer"] == "o200k_harmony"


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    prepared = prepare(synthetic_config(tmp_path), progress=False)
    with open(prepared.train.path, "r+b") as handle:
        handle.truncate(prepared.train.path.stat().st_size - 4)
    with pytest.raises(DataError, match="truncated") as error:
        prepare(synthetic_config(tmp_path), progress=False)
    assert str(prepared.train.path) in str(error.value)


def test_a_corrupt_file_fails_its_checksum(tmp_path):
    prepared = prepare(synthetic_config(tmp_path), progress=False)
    with open(prepared.val.path, "r+b") as handle:
        handle.seek(8)
        handle.write(b"\x01\x02\x03\x04")  # same size, other tokens
    with pytest.raises(DataError, match="sha256") as error:
        prepare(synthetic_config(tmp_path), progress=False)
    assert str(prepared.val.path) in str(error.value)
    # Size-only checking is a deliberate opt-out: then the damage is not looked for.
    assert prepare(synthetic_config(tmp_path, verify_checksum="never"), progress=False)


def test_an_interrupted_preparation_leaves_nothing_trusted(tmp_path, monkeypatch):
    real = prepare_module._encode_all

    def interrupted(documents, num_proc):
        yield next(real(documents, num_proc))
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_encode_all", interrupted)
    config = synthetic_config(tmp_path, synthetic_train_stories=3000)
    with pytest.raises(KeyboardInterrupt):
        prepare(config, progress=False)
    folder = next((tmp_path / "cache").iterdir())
    assert not list(folder.glob("*.json")) and not list(folder.glob("*.bin"))
    assert not list(folder.glob("*.tmp")), "temporary files are cleaned up"
    monkeypatch.setattr(prepare_module, "_encode_all", real)
    assert prepare(config, progress=False).train.num_documents == 3000


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors before any long work


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: {"train_files": [str(p / "missing.jsonl")]}, "missing.jsonl does not exist"),
        (
            lambda p: {"train_files": [str(p / "notes.csv")]},
            "unsupported extension '.csv'.*valid: .txt",
        ),
        (lambda p: {"train_files": [str(p / "empty.jsonl")]}, "empty.jsonl is empty"),
        (
            lambda p: {"train_files": [str(p / "t.jsonl")], "text_field": "story"},
            r"no field 'story'.*\['text', 'id'\]",
        ),
        (lambda p: {"train_files": []}, r"data.train_files=\[a.jsonl"),
        (lambda p: {"train_files": [str(p / "t.jsonl")], "val_fraction": 0.0}, "val_fraction=0"),
    ],
)
def test_bad_file_inputs_name_the_value_and_what_is_valid(tmp_path, make, message):
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "t.jsonl", ["One story.", "Another story."])
    with pytest.raises(DataError, match=message):
        prepare(files_config(tmp_path, [], **make(tmp_path)), progress=False)


def test_a_parquet_without_the_text_field_lists_its_fields(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"body": ["x"], "title": ["y"]}), path)
    with pytest.raises(DataError, match=r"no field 'text'.*\['body', 'title'\]"):
        prepare(files_config(tmp_path, [path]), progress=False)


def test_a_corpus_of_empty_texts_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "blank.jsonl", ["", "", ""])
    with pytest.raises(DataError, match="empty corpus"):
        prepare(files_config(tmp_path, [path], [path]), progress=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", "web"),
        ("offline_fallback", "ignore"),
        ("verify_checksum", "sometimes"),
        ("num_proc", -1),
        ("max_train_documents", 0),
    ],
)
def test_invalid_config_values_are_named(field, value):
    with pytest.raises(DataError, match=f"data.{field}={value!r}"):
        DataConfig(**{field: value})


# ----------------------------------------------------------------------------------------------
# The synthetic corpus


def test_synthetic_stories_are_deterministic_per_seed_and_differ_across_seeds():
    assert generate_stories(20, seed=3) == generate_stories(20, seed=3)
    assert not set(generate_stories(20, seed=3)) & set(generate_stories(20, seed=4))


def test_any_synthetic_story_can_be_made_alone():
    assert generate_stories(5, seed=1, start=10) == [generate_story(i, 1) for i in range(10, 15)]


def test_synthetic_train_and_val_streams_are_disjoint():
    train = set(generate_stories(2000, seed=0))
    val = set(generate_stories(200, seed=0, stream="val"))
    assert len(train) == 2000 and not train & val


def test_synthetic_stories_are_varied_and_keep_their_cast():
    assert len(GIRL_NAMES) + len(BOY_NAMES) >= 60 and len(OBJECTS) >= 80 and len(PLACES) >= 40
    stories = generate_stories(500, seed=0)
    openings = {" ".join(story.split()[:4]) for story in stories}
    assert len(openings) > 100, "many sentence shapes and names at the very start"
    assert sum('"' in story for story in stories) > 400, "most stories have dialogue"
    for story in stories[:50]:
        # The protagonist is named in the first sentence and keeps appearing.
        first_sentence = story.split(".")[0]
        name = next(
            word.strip(",") for word in reversed(first_sentence.split()) if word[0].isupper()
        )
        if name in GIRL_NAMES + BOY_NAMES:
            assert story.count(name) >= 3, story


def test_max_train_documents_caps_the_synthetic_corpus_too(tmp_path):
    capped = prepare(synthetic_config(tmp_path, max_train_documents=120), progress=False)
    assert capped.train.num_documents == 120 and capped.val.num_documents == 40
    same = prepare(synthetic_config(tmp_path, synthetic_train_stories=120), progress=False)
    assert same.prepared_splits == () and same.fingerprint == capped.fingerprint


def test_synthetic_source_prepares_with_separate_train_and_val(tmp_path):
    prepared = prepare(synthetic_config(tmp_path), progress=False)
    assert prepared.train.num_documents == 300 and prepared.val.num_documents == 40
    assert decoded_documents(prepared.val) == generate_stories(40, seed=0, stream="val")


# ----------------------------------------------------------------------------------------------
# The hub: HF cache first, then the network, else the recorded fallback


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """No hub and an empty Hugging Face cache: nothing can be found or downloaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    hf_cache = tmp_path / "hf-cache"
    hf_cache.mkdir()
    return hf_cache


def hub_config(tmp_path: Path, hf_cache: Path, **overrides) -> DataConfig:
    values = {
        "source": "hub",
        "cache_dir": str(tmp_path / "cache"),
        "hf_cache_dir": str(hf_cache),
        "synthetic_train_stories": 200,
        "synthetic_val_stories": 20,
        "num_proc": 1,
    }
    return DataConfig(**(values | overrides))


def test_unreachable_hub_falls_back_to_synthetic_loudly(tmp_path, offline, caplog):
    start = time.perf_counter()
    prepared = prepare(hub_config(tmp_path, offline), progress=False)
    assert time.perf_counter() - start < 20, "offline must never hang"
    assert prepared.source == "synthetic"
    assert "HF_HUB_OFFLINE=1" in prepared.fallback
    assert "FALLBACK for roneneldan/TinyStories" in prepared.description
    assert prepared.summary()["fallback"] == prepared.fallback
    assert "DATA FALLBACK" in caplog.text and "data=text" in caplog.text
    assert prepared.train.num_documents == 200


def test_unreachable_hub_with_fallback_error_names_the_alternatives(tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"data=text data.train_files=\[.*data=synthetic"):
        prepare(hub_config(tmp_path, offline, offline_fallback="error"), progress=False)
    assert time.perf_counter() - start < 20
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def fill_hf_cache(hf_cache: Path, train: Path, validation: Path) -> None:
    """Lay out a dataset in the HF cache the way load_dataset("roneneldan/TinyStories") leaves
    it."""
    import datasets

    build = hf_cache.parent / "hf-build"
    datasets.load_dataset(
        "json",
        data_files={"train": str(train), "validation": str(validation)},
        cache_dir=str(build),
    )
    source = next(path for path in build.glob("json/*/0.0.0/*") if path.is_dir())
    target = hf_cache / "roneneldan___tiny_stories" / "default" / "0.0.0" / source.name
    shutil.copytree(source, target)
    for arrow in target.glob("json-*.arrow"):
        arrow.rename(target / arrow.name.replace("json-", "tiny_stories-"))


def test_a_copy_in_the_hf_cache_is_used_offline(tmp_path, offline, stories):
    train = write_jsonl(tmp_path / "train.jsonl", stories[:40])
    validation = write_jsonl(tmp_path / "validation.jsonl", stories[40:50])
    fill_hf_cache(offline, train, validation)
    prepared = prepare(hub_config(tmp_path, offline, offline_fallback="error"), progress=False)
    assert prepared.fallback is None and prepared.source == "hub"
    assert decoded_documents(prepared.train) == stories[:40]
    assert decoded_documents(prepared.val) == stories[40:50]
    assert prepared.directory.name.startswith("tinystories-")


def test_prepared_hub_files_need_neither_network_nor_hf_cache(tmp_path, offline, stories):
    fill_hf_cache(
        offline,
        write_jsonl(tmp_path / "a.jsonl", stories[:20]),
        write_jsonl(tmp_path / "b.jsonl", stories[20:25]),
    )
    first = prepare(hub_config(tmp_path, offline), progress=False)
    shutil.rmtree(offline)
    offline.mkdir()
    again = prepare(hub_config(tmp_path, offline, offline_fallback="error"), progress=False)
    assert again.prepared_splits == () and again.fingerprint == first.fingerprint


def test_a_capped_copy_in_the_hf_cache_gives_its_first_train_documents(tmp_path, offline, stories):
    fill_hf_cache(
        offline,
        write_jsonl(tmp_path / "train.jsonl", stories[:40]),
        write_jsonl(tmp_path / "validation.jsonl", stories[40:50]),
    )
    config = hub_config(tmp_path, offline, offline_fallback="error", max_train_documents=15)
    capped = prepare(config, progress=False)
    assert decoded_documents(capped.train) == stories[:15]
    assert decoded_documents(capped.val) == stories[40:50]
    assert "first 15 train documents" in capped.description
    whole = prepare(hub_config(tmp_path, offline, offline_fallback="error"), progress=False)
    assert whole.train.num_documents == 40 and whole.fingerprint != capped.fingerprint


@pytest.fixture
def reachable_hub(monkeypatch) -> dict:
    """A reachable 'hub' that is not in the HF cache, serving what the test puts in
    hub["files"] ({split: local .jsonl}) through datasets' json builder, so no network is needed.
    hub["loads"] records (path, streaming) of each load; hub["rows"] each split's streamed rows."""
    import datasets

    from gpt_oss.data import hub

    real_load_dataset = datasets.load_dataset
    served = {"files": {}, "loads": [], "rows": {}}

    def load_dataset(path, name=None, cache_dir=None, streaming=False):
        served["loads"].append((path, streaming))
        if not streaming:  # what an empty HF cache answers; a whole download would come next
            raise FileNotFoundError(f"{path} is not in the cache")
        streams = real_load_dataset("json", data_files=served["files"], streaming=True)
        for split, stream in streams.items():  # count the rows each split's stream yields
            read = served["rows"].setdefault(split, [])
            streams[split] = stream.map(lambda row, read=read: read.append(row) or row)
        return streams

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)
    return served


def test_a_capped_hub_load_streams_only_the_first_train_documents(
    tmp_path, offline, stories, reachable_hub, caplog
):
    """Not in the HF cache, hub reachable: the train split is streamed and cut, never loaded
    whole."""
    reachable_hub["files"] = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", stories[:200])),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", stories[200:220])),
    }
    caplog.set_level("INFO", logger="gpt_oss.data.hub")
    config = hub_config(tmp_path, offline, offline_fallback="error", max_train_documents=30)
    prepared = prepare(config, progress=False)
    hub_path = "roneneldan/TinyStories"
    assert reachable_hub["loads"] == [(hub_path, False), (hub_path, True)]
    assert prepared.source == "hub" and prepared.fallback is None
    assert decoded_documents(prepared.train) == stories[:30]
    assert decoded_documents(prepared.val) == stories[200:220], "validation is taken whole"
    # the train stream stops at the cap (datasets may look a row ahead), far before its 200 rows
    rows = reachable_hub["rows"]
    assert 30 <= len(rows["train"]) < 40 and len(rows["validation"]) == 20
    assert f"streaming the first 30 train documents of {hub_path}" in caplog.text
    # the slice is cached as its own source: the next run needs no stream at all
    reachable_hub["loads"].clear()
    assert prepare(config, progress=False).prepared_splits == () and not reachable_hub["loads"]


def test_a_streamed_split_without_the_text_field_is_named(
    tmp_path, offline, stories, reachable_hub
):
    reachable_hub["files"] = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", stories[:20], field="story")),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", stories[20:25])),
    }
    config = hub_config(tmp_path, offline, offline_fallback="error", max_train_documents=10)
    with pytest.raises(
        DataError, match=r"'train'\] row 0: no text field 'text'.*\['story', 'id'\]"
    ):
        prepare(config, progress=False)
    with pytest.raises(DataError, match=r"no split 'valid' \(data.val_split\); it has \['train'"):
        prepare(dataclasses.replace(config, val_split="valid"), progress=False)


def test_an_offline_fallback_keeps_the_train_cap(tmp_path, offline, caplog):
    prepared = prepare(hub_config(tmp_path, offline, max_train_documents=50), progress=False)
    assert prepared.source == "synthetic" and prepared.train.num_documents == 50
    assert "(50 train / 20 val stories" in caplog.text


def test_the_probe_reports_an_unreachable_endpoint_quickly(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.perf_counter()
    reason = hub_unreachable_reason(timeout_s=2.0)
    assert reason is not None and "127.0.0.1:9" in reason
    assert time.perf_counter() - start < 5


# ----------------------------------------------------------------------------------------------
# Loaders


@pytest.fixture
def tokens() -> np.ndarray:
    return np.arange(5000, dtype=np.uint32) * 41  # values up to ~205k: uint32, not uint16


def test_train_batches_are_shifted_int64_windows(tokens):
    inputs, targets = TrainLoader(tokens, batch_size=4, seq_len=16, seed=0).next_batch()
    assert inputs.shape == targets.shape == (4, 16)
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.all(torch.diff(inputs, dim=1) == 41), "each row is one contiguous window"


def test_train_stream_is_a_function_of_the_seed(tokens):
    def stream(seed: int) -> list[torch.Tensor]:
        loader = TrainLoader(tokens, batch_size=4, seq_len=16, seed=seed)
        return [loader.next_batch()[0] for _ in range(5)]

    assert all(torch.equal(a, b) for a, b in zip(stream(1), stream(1), strict=True))
    assert not torch.equal(stream(1)[0], stream(2)[0])
    first = stream(1)
    assert not torch.equal(first[0], first[1]), "consecutive batches differ"


def test_resuming_from_a_saved_position_gives_the_same_next_batches(tokens):
    loader = TrainLoader(tokens, batch_size=4, seq_len=16, seed=7)
    for _ in range(3):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # as it goes through a checkpoint
    expected = [loader.next_batch() for _ in range(3)]
    resumed = TrainLoader(tokens, batch_size=4, seq_len=16, seed=7)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(3)), strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_resuming_a_different_stream_is_an_error(tokens):
    state = TrainLoader(tokens, batch_size=4, seq_len=16, seed=7).state_dict()
    with pytest.raises(DataError, match="saved seq_len=16"):
        TrainLoader(tokens, batch_size=4, seq_len=32, seed=7).load_state_dict(state)


def test_ranks_get_distinct_slices_of_the_global_batch(tokens):
    single = TrainLoader(tokens, batch_size=8, seq_len=16, seed=3).next_batch()[0]
    ranks = [
        TrainLoader(tokens, 4, 16, seed=3, rank=r, world_size=2).next_batch()[0] for r in range(2)
    ]
    assert not torch.equal(ranks[0], ranks[1])
    assert torch.equal(torch.cat(ranks), single), "world_size=1 is the plain stream"


def test_validation_windows_are_sequential_and_repeatable(tokens):
    loader = ValLoader(tokens, batch_size=3, seq_len=100, max_batches=None)
    batches = list(loader.rank_batches(0, 1))
    assert len(batches) == 17  # 49 whole windows of 101 tokens at stride 100
    assert all(weight == 1 for _, _, weight in batches), "one process scores every window"
    firsts = torch.cat([inputs[:, 0] for inputs, _, _ in batches])
    assert torch.equal(firsts, torch.arange(49) * 100 * 41)
    again = loader.rank_batches(0, 1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert loader.num_target_tokens == 49 * 100


def test_validation_cap_and_stride(tmp_path):
    prepared = prepare(synthetic_config(tmp_path), progress=False)
    loader = ValLoader(prepared.val, batch_size=2, seq_len=32, stride=16, max_batches=3)
    batches = list(loader.rank_batches(0, 1))
    starts = torch.cat([inputs[:, 0] for inputs, _, _ in batches])
    expected = torch.from_numpy(np.asarray(prepared.val.tokens)[np.arange(6) * 16].astype(np.int64))
    assert len(batches) == 3 and torch.equal(starts, expected)
    assert loader.num_target_tokens == 6 * 32


def test_loaders_reject_impossible_sizes(tokens):
    with pytest.raises(DataError, match="too few"):
        TrainLoader(tokens[:10], batch_size=1, seq_len=10, seed=0)
    with pytest.raises(DataError, match="rank=2"):
        TrainLoader(tokens, batch_size=1, seq_len=10, seed=0, rank=2, world_size=2)


# ----------------------------------------------------------------------------------------------
# Configs and the command


@pytest.mark.parametrize("name", ["tinystories", "text", "synthetic"])
def test_every_data_config_composes_into_a_data_config(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf" / "data"), version_base=None):
        config = instantiate(compose(config_name=name), _convert_="all")
    assert isinstance(config, DataConfig)
    assert config.source == {"tinystories": "hub", "text": "files", "synthetic": "synthetic"}[name]


@pytest.mark.skipif(not (REPO / "conf" / "config.yaml").is_file(), reason="needs the root config")
def test_the_command_prepares_and_prints_a_summary(tmp_path):
    command = [
        sys.executable, "-m", "gpt_oss.data", "data=synthetic", "data.synthetic_train_stories=200",
        "data.synthetic_val_stories=20", f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env=os.environ | {"TQDM_DISABLE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "200 docs" in result.stdout and f"location:  {tmp_path / 'cache'}" in result.stdout


def _not_utf8(path: Path) -> tuple[Path, int]:
    """A .jsonl or .txt file whose 31st line holds a Latin-1 byte; returns it and that offset."""
    lines = [json.dumps({"text": f"Story {i} about a cat."}).encode() for i in range(40)]
    lines[30] = b'{"text": "A caf\xe9 story."}' if path.suffix == ".jsonl" else b"A caf\xe9 story."
    if path.suffix == ".txt":
        lines = [b"Story %d about a cat." % i if i != 30 else line for i, line in enumerate(lines)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, path.read_bytes().index(b"\xe9")


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_file_that_is_not_utf8_is_named_with_the_offset_of_its_first_bad_byte(tmp_path, suffix):
    from gpt_oss.evaluate import read_documents
    from gpt_oss.generate import read_prompts
    from gpt_oss.model.config import ConfigError

    path, offset = _not_utf8(tmp_path / f"stories{suffix}")
    expected = f"{path} is not UTF-8 text: byte 0xe9 at offset {offset} \\(line 31\\)"
    with pytest.raises(DataError, match=expected):
        prepare(files_config(tmp_path, [path]), progress=False)
    with pytest.raises(ConfigError, match=expected):
        read_documents(path)
    with pytest.raises(ConfigError, match=expected):
        read_prompts(path)

"""The compact vocabulary: built from real TinyStories token counts, every text round-trips
exactly (unseen words, other scripts, emoji, the literal text <|endoftext|>), tokens outside
it are spelled by their bytes, specials are kept or refused, and the map survives JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tinystories_sample_path

from gpt_oss.generate import encode_prompt, token_id
from gpt_oss.model.config import ConfigError
from gpt_oss.model.hf import VOCABULARY_FILE, CheckpointError, export_hf
from gpt_oss.model.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, VOCAB_SIZE, get_tokenizer
from gpt_oss.model.vocabulary import (
    CompactVocabulary,
    FullVocabulary,
    VocabularyError,
    byte_token_ids,
    count_tokens,
    vocabulary_from_dict,
)
from gpt_oss.training.checkpoint import save_checkpoint
from gpt_oss.training.loading import load_text_vocabulary, load_vocabulary, load_with_vocabulary

SAMPLE = tinystories_sample_path()
needs_sample = pytest.mark.skipif(
    SAMPLE is None, reason="../shared/data/tinystories_sample.jsonl is absent"
)

ROUND_TRIP_TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "The quokka's antidisestablishmentarianism befuddled Zyxwvut from Qaanaaq.",  # unseen words
    "Привет, мир! 你好，世界。 مرحبا بالعالم. नमस्ते दुनिया. こんにちは",  # other scripts
    "Emoji: 🐉🦄👩🏽‍🚀🇳🇴 and a family 👨‍👩‍👧‍👦.",  # multi-codepoint sequences
    f"The literal text {ENDOFTEXT} is not a special token here. <|start|>",
    "  tabs\tand\nnewlines\r\n\n  and  spaces  ",
    "\x00\x07 control bytes and ÿ þ ß",
    "",
]


@pytest.fixture(scope="module")
def train_tokens() -> np.ndarray:
    """o200k tokens of 400 real stories (or written ones without the sample), laid out as the
    data pipeline does: <|endoftext|> before every document."""
    if SAMPLE is not None:
        with open(SAMPLE) as handle:
            texts = [json.loads(next(handle))["text"] for _ in range(400)]
    else:
        texts = ["Once upon a time, there was a little girl named Lily. She loved the park."] * 50
    encoding = get_tokenizer()
    pieces = [[ENDOFTEXT_ID, *encoding.encode_ordinary(text)] for text in texts]
    return np.concatenate([np.array(p, dtype=np.uint32) for p in pieces])


@pytest.fixture(scope="module")
def vocabulary(train_tokens) -> CompactVocabulary:
    return CompactVocabulary.from_counts(count_tokens(train_tokens))


def test_built_from_counts_it_holds_every_used_id_all_bytes_and_endoftext(train_tokens, vocabulary):
    used = np.unique(train_tokens)
    assert vocabulary.contains(used).all()
    assert vocabulary.contains(byte_token_ids()).all()
    assert vocabulary.size == len(np.union1d(used, byte_token_ids()))
    assert vocabulary.size < 5000  # ~2.5k ids for 400 stories, not 201k
    assert vocabulary.to_o200k([vocabulary.endoftext_id]).tolist() == [ENDOFTEXT_ID]
    # every training token has an id of its own: the training split is never spelled by bytes
    assert len(vocabulary.from_o200k(train_tokens)) == len(train_tokens)
    assert (vocabulary.to_o200k(vocabulary.from_o200k(train_tokens)) == train_tokens).all()


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_any_text_round_trips_exactly(vocabulary, text):
    ids = vocabulary.encode(text)
    assert all(0 <= i < vocabulary.size for i in ids)
    assert vocabulary.decode_bytes(ids) == text.encode("utf-8")
    assert vocabulary.decode(ids) == text


def test_unseen_text_is_spelled_by_bytes_and_the_full_vocabulary_is_the_identity(vocabulary):
    text = ROUND_TRIP_TEXTS[2]
    o200k = get_tokenizer().encode_ordinary(text)
    assert not vocabulary.contains(o200k).all()  # the test must exercise the fallback
    assert len(vocabulary.encode(text)) > len(o200k)
    full = FullVocabulary()
    assert full.encode(text) == o200k and full.decode(o200k) == text and full.size == VOCAB_SIZE


def test_a_token_outside_the_vocabulary_becomes_the_compact_ids_of_its_bytes(vocabulary):
    encoding = get_tokenizer()
    word = encoding.encode_ordinary(" befuddled")
    absent = next(t for t in word if not vocabulary.contains([t])[0])
    data = encoding.decode_single_token_bytes(absent)
    byte_ids = [int(vocabulary.from_o200k([byte_token_ids()[b]])[0]) for b in data]
    assert vocabulary.from_o200k([absent]).tolist() == byte_ids
    present = encoding.encode_ordinary(" Lily")[0]
    # a mix keeps order: present, spelled, present
    expected = [*vocabulary.from_o200k([present]), *byte_ids, *vocabulary.from_o200k([present])]
    assert vocabulary.from_o200k([present, absent, present]).tolist() == expected


def test_vectorised_mapping_equals_token_by_token(vocabulary):
    rng = np.random.default_rng(0)
    ordinary = np.array(sorted(set(range(199998)) - {0}))  # ordinary ids, mostly absent
    ids = np.concatenate(
        [rng.choice(ordinary, 300), vocabulary.o200k_ids[rng.integers(0, 200, 300)]]
    )
    rng.shuffle(ids)
    one_by_one = [int(c) for token in ids for c in vocabulary.from_o200k([token])]
    assert vocabulary.from_o200k(ids).tolist() == one_by_one
    assert vocabulary.decode_bytes(vocabulary.from_o200k(ids)) == get_tokenizer().decode_bytes(
        ids.tolist()
    )


def test_specials_are_kept_by_id_and_refused_when_absent(vocabulary):
    assert vocabulary.token_id(ENDOFTEXT) == vocabulary.endoftext_id
    assert vocabulary.encode(ENDOFTEXT, allowed_special="all") == [vocabulary.endoftext_id]
    assert vocabulary.endoftext_id not in vocabulary.encode(ENDOFTEXT)  # ordinary text by default
    with pytest.raises(VocabularyError, match=r"<\|start\|>.*200006.*not in this"):
        vocabulary.encode("<|start|>hi", allowed_special="all")
    with pytest.raises(VocabularyError, match="not a single token"):
        vocabulary.token_id("not one token")
    with pytest.raises(VocabularyError, match=r"'<\|start\|>' \(o200k id 200006\) is not in this"):
        vocabulary.token_id("<|start|>")
    with pytest.raises(VocabularyError, match=r"outside \[0, "):
        vocabulary.decode([vocabulary.size])
    # a special the data used is kept, though it is not among the most frequent
    counts = np.zeros(VOCAB_SIZE, dtype=np.int64)
    counts[[300, 301, 302]] = 100
    counts[200006] = 1
    small = CompactVocabulary.from_counts(counts, size=258)
    assert small.contains([200006, ENDOFTEXT_ID]).all() and small.size == 258
    assert small.encode("<|start|>", allowed_special="all") == [small.token_id("<|start|>")]


def test_vocab_size_keeps_the_most_frequent_ids_and_pads_to_exactly_that_size():
    counts = np.zeros(VOCAB_SIZE, dtype=np.int64)
    counts[[1000, 2000, 3000, 4000]] = [5, 50, 7, 50]
    counts[ENDOFTEXT_ID] = 9
    capped = CompactVocabulary.from_counts(counts, size=257 + 2)
    # 256 bytes + <|endoftext|> + the 2 most frequent (a tie at 50: both kept)
    assert capped.size == 259
    assert capped.contains([2000, 4000]).all() and not capped.contains([1000, 3000]).any()
    tie = CompactVocabulary.from_counts(counts, size=258)  # one slot, two with 50: lower id
    assert tie.contains([2000])[0] and not tie.contains([4000])[0]
    assert CompactVocabulary.from_counts(counts).size == 261  # null: exactly the used ids
    # more room than used ids: padded with the lowest-ranked unused ordinary ids (256, 257, ...)
    padded = CompactVocabulary.from_counts(counts, size=264)
    assert padded.size == 264 and padded.contains([1000, 2000, 3000, 4000, 256, 257, 258]).all()
    assert not padded.contains([259])[0]
    for bad in (200, 257.5, VOCAB_SIZE + 1):
        with pytest.raises(
            VocabularyError, match=rf"data.vocab_size={bad} is invalid: .* at least 257"
        ):
            CompactVocabulary.from_counts(counts, size=bad)


def test_serialised_map_is_plain_json_and_checked(vocabulary):
    data = json.loads(json.dumps(vocabulary.to_dict()))
    again = vocabulary_from_dict(data)
    assert again == vocabulary and again.o200k_ids.tolist() == vocabulary.o200k_ids.tolist()
    assert vocabulary_from_dict(FullVocabulary().to_dict()) == FullVocabulary()
    assert vocabulary_from_dict(None) == FullVocabulary()
    tampered = data | {"o200k_ids": data["o200k_ids"][:-1]}
    with pytest.raises(VocabularyError, match="checksum mismatch"):
        vocabulary_from_dict(tampered)
    with pytest.raises(VocabularyError, match="vocab_size=7 but holds"):
        vocabulary_from_dict(data | {"vocab_size": 7})
    with pytest.raises(VocabularyError, match="not a gpt-oss-lab vocabulary"):
        vocabulary_from_dict({"o200k_ids": [1, 2]})
    with pytest.raises(VocabularyError, match="kind 'tiny' is invalid"):
        vocabulary_from_dict(data | {"kind": "tiny"})


def test_a_map_without_every_byte_token_is_refused():
    with pytest.raises(VocabularyError, match="all 256 single-byte tokens"):
        CompactVocabulary([*range(255), ENDOFTEXT_ID])
    with pytest.raises(VocabularyError, match="strictly ascending"):
        CompactVocabulary([*range(256), ENDOFTEXT_ID, 300, 300])


def test_o200k_to_compact_is_the_map_encode_uses(vocabulary):
    mapping = vocabulary.o200k_to_compact()
    assert len(mapping) == vocabulary.size
    sample = vocabulary.o200k_ids[::97]
    assert [mapping[int(i)] for i in sample] == vocabulary.from_o200k(sample).tolist()


@needs_sample
def test_the_whole_sample_needs_about_eight_thousand_ids():
    """DESIGN.md's measured fact: 8,148 distinct ids in the 4,040-story sample."""
    encoding = get_tokenizer()
    with open(SAMPLE) as handle:
        texts = [json.loads(line)["text"] for line in handle]
    tokens = np.concatenate([encoding.encode_to_numpy(t, disallowed_special=()) for t in texts])
    vocabulary = CompactVocabulary.from_counts(count_tokens(tokens))
    assert 8000 < vocabulary.size < 8500


# --- the map travels with the model: checkpoints and Hugging Face exports ----------------------


@pytest.fixture
def compact_model(make_model, vocabulary):
    """A random model whose vocab_size is the compact vocabulary's."""
    return make_model(vocab_size=vocabulary.size, sliding_window=16)


def test_a_checkpoint_stores_the_map_and_loads_it_back(compact_model, vocabulary, tmp_path):
    path = save_checkpoint(
        tmp_path / "checkpoints" / "last.pt", compact_model, vocabulary=vocabulary.to_dict()
    )
    assert load_vocabulary(path) == vocabulary
    assert load_vocabulary(tmp_path) == vocabulary  # a run directory
    model, loaded, _ = load_with_vocabulary(path)
    assert loaded == vocabulary and model.config.vocab_size == vocabulary.size
    ids = torch.tensor([vocabulary.encode("Once upon a time, a dragon 🐉 flew.")])
    torch.testing.assert_close(model(ids), compact_model(ids), rtol=0, atol=0)


def test_a_checkpoint_without_a_map_is_full_or_raw_ids(make_model, tmp_path):
    raw = save_checkpoint(tmp_path / "raw.pt", make_model())  # conftest's 1000-id test model
    assert load_vocabulary(raw) is None
    with pytest.raises(CheckpointError, match="stores no vocabulary"):
        load_text_vocabulary(raw)


def test_a_damaged_or_misfitting_map_in_a_checkpoint_is_refused(
    compact_model, vocabulary, tmp_path
):
    damaged = vocabulary.to_dict()
    damaged["o200k_ids"] = damaged["o200k_ids"][:-1] + [damaged["o200k_ids"][-1] + 1]
    path = save_checkpoint(tmp_path / "damaged.pt", compact_model, vocabulary=damaged)
    with pytest.raises(CheckpointError, match="damaged.pt: its vocabulary is unusable: .*checksum"):
        load_vocabulary(path)
    other = CompactVocabulary.from_counts(np.zeros(VOCAB_SIZE, dtype=np.int64), size=300)
    path = save_checkpoint(tmp_path / "other.pt", compact_model, vocabulary=other.to_dict())
    with pytest.raises(
        CheckpointError, match=f"300 ids but the model's vocab_size is {vocabulary.size}"
    ):
        load_with_vocabulary(path)


def test_generate_encodes_prompts_and_stops_in_the_compact_vocabulary(vocabulary):
    ids = encode_prompt("Once upon a time 🐉", "<|endoftext|>", vocabulary)
    assert ids[0] == vocabulary.endoftext_id and vocabulary.decode(ids[1:]) == "Once upon a time 🐉"
    assert token_id("<|endoftext|>", vocabulary=vocabulary) == vocabulary.endoftext_id
    with pytest.raises(
        ConfigError, match=r"stop token '<\|start\|>' \(o200k id 200006\) is not in"
    ):
        token_id("<|start|>", vocabulary=vocabulary)


@pytest.mark.usefixtures("single_threaded")
def test_a_compact_export_loads_in_transformers_with_the_same_logits(
    compact_model, vocabulary, tmp_path
):
    transformers = pytest.importorskip("transformers")
    directory = export_hf(compact_model, tmp_path / "hf", vocabulary=vocabulary)
    config = json.loads((directory / "config.json").read_text())
    assert (
        config["vocab_size"] == vocabulary.size
        and config["eos_token_id"] == vocabulary.endoftext_id
    )
    reference = transformers.GptOssForCausalLM.from_pretrained(
        directory, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32
    ).eval()
    ids = torch.tensor(
        [[vocabulary.endoftext_id, *vocabulary.encode("Once upon a time, Zyx 你好 🐉.")]]
    )
    with torch.no_grad():
        expected, actual = reference(ids).logits, compact_model(ids)
    assert actual.shape[-1] == vocabulary.size
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-4
    assert load_vocabulary(directory) == vocabulary  # load_model, generate, evaluate read it
    model, loaded, _ = load_with_vocabulary(directory)
    assert loaded == vocabulary and model.config.vocab_size == vocabulary.size
    # exporting a full-vocabulary model over it leaves no stale map behind
    export_hf(compact_model, directory)
    assert not (directory / VOCABULARY_FILE).exists()


def test_an_export_whose_map_does_not_fit_the_model_is_refused(make_model, vocabulary, tmp_path):
    with pytest.raises(
        CheckpointError, match=f"{vocabulary.size} ids but the model's vocab_size is 1000"
    ):
        export_hf(make_model(), tmp_path / "hf", vocabulary=vocabulary)
    assert not (tmp_path / "hf").exists()

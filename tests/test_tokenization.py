"""tokenize_frame output, the cache key (every input that changes the ids changes it) and safe concurrent builds."""

from __future__ import annotations

import copy
import threading

import pytest

import pref_core.text.tokenization as tokenization
from pref_core.config.schema import PromptConfig
from pref_core.data.labels import swap
from pref_core.model.tiny import train_tokenizer
from pref_core.text.prompts import PromptEncoder
from pref_core.text.tokenization import (
    FORMAT_VERSION,
    build_token_cache,
    compute_cache_key,
    default_num_proc,
    hash_tokenizer,
    load_token_cache,
    tokenize_frame,
)

CONFIG = PromptConfig(template="seed", max_length=128, truncation="seed_capped")  # bounded by max_length


@pytest.fixture(scope="module")
def small_frame(train_frame):
    return train_frame.iloc[:40].reset_index(drop=True)


def test_tokenize_frame_columns_and_values(tiny_tokenizer, small_frame):
    dataset = tokenize_frame(small_frame, tiny_tokenizer, CONFIG)
    assert dataset.column_names == ["id", "input_ids", "length", "label"]
    assert dataset["id"] == small_frame["id"].tolist()
    assert dataset["label"] == small_frame["label"].tolist()
    encoder = PromptEncoder(tiny_tokenizer, CONFIG)
    expected = encoder.encode_batch(list(zip(small_frame.prompt, small_frame.response_a, small_frame.response_b)))
    assert dataset["input_ids"] == expected
    assert dataset["length"] == [len(x) for x in expected]
    assert max(dataset["length"]) <= CONFIG.max_length


def test_with_swap_exchanges_responses_not_labels(tiny_tokenizer, small_frame):
    dataset = tokenize_frame(small_frame, tiny_tokenizer, CONFIG, with_swap=True)
    assert dataset.column_names == ["id", "input_ids", "length", "label", "input_ids_swap", "length_swap"]
    swapped = swap(small_frame)
    encoder = PromptEncoder(tiny_tokenizer, CONFIG)
    expected = encoder.encode_batch(list(zip(swapped.prompt, swapped.response_a, swapped.response_b)))
    assert dataset["input_ids_swap"] == expected
    assert dataset["length_swap"] == [len(x) for x in expected]
    assert dataset["label"] == small_frame["label"].tolist()  # the consumer maps it with swap_label_index
    row = next(i for i, (a, b) in enumerate(zip(small_frame.response_a, small_frame.response_b)) if a != b)
    assert dataset["input_ids"][row] != dataset["input_ids_swap"][row]


def test_test_rows_get_label_minus_one(tiny_tokenizer, small_frame):
    test_like = small_frame.drop(columns=["label"])
    assert set(tokenize_frame(test_like, tiny_tokenizer, CONFIG)["label"]) == {-1}


def test_missing_columns_are_named(tiny_tokenizer, small_frame):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['response_b'\]"):
        tokenize_frame(small_frame.drop(columns=["response_b"]), tiny_tokenizer, CONFIG)


def test_worker_processes_give_the_same_ids(tiny_tokenizer, small_frame):
    single = tokenize_frame(small_frame, tiny_tokenizer, CONFIG, with_swap=True, num_proc=1)
    parallel = tokenize_frame(small_frame, tiny_tokenizer, CONFIG, with_swap=True, num_proc=2)
    assert parallel.to_dict() == single.to_dict()


def test_default_num_proc():
    assert default_num_proc(100, cores=16) == 1
    assert default_num_proc(5000, cores=16) == 1
    assert default_num_proc(50_000, cores=16) == 16
    assert default_num_proc(50_000, cores=2) == 1  # the Rust tokenizer already uses both cores in-process
    assert default_num_proc(50_000) >= 1


# -- hashes and keys -----------------------------------------------------------------------------


def test_hash_tokenizer_is_a_content_hash(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert hash_tokenizer(reloaded) == hash_tokenizer(tiny_tokenizer)
    other = train_tokenizer(["some completely different words for a new vocabulary"], vocab_size=300)
    assert hash_tokenizer(other) != hash_tokenizer(tiny_tokenizer)
    changed = copy.deepcopy(tiny_tokenizer)
    changed.add_tokens(["<extra_token>"])
    assert hash_tokenizer(changed) != hash_tokenizer(tiny_tokenizer)


def test_cache_key_changes_with_every_input(tiny_tokenizer):
    base = dict(data_hash="d1", tokenizer_hash=hash_tokenizer(tiny_tokenizer), prompt_config=CONFIG, with_swap=False)
    key = compute_cache_key(**base)
    assert compute_cache_key(**base) == key
    variants = {
        "data hash": {**base, "data_hash": "d2"},
        "tokenizer": {**base, "tokenizer_hash": "other"},
        "template": {**base, "prompt_config": CONFIG.model_copy(update={"template": "multi_turn"})},
        "max_length": {**base, "prompt_config": CONFIG.model_copy(update={"max_length": 256})},
        "truncation": {**base, "prompt_config": CONFIG.model_copy(update={"truncation": "proportional"})},
        "with_swap": {**base, "with_swap": True},
    }
    keys = {name: compute_cache_key(**kwargs) for name, kwargs in variants.items()}
    assert all(k != key for k in keys.values()), keys
    assert len(set(keys.values())) == len(keys)


def test_cache_key_covers_format_version(tiny_tokenizer, monkeypatch):
    key = compute_cache_key("d", "t", CONFIG, False)
    monkeypatch.setattr(tokenization, "FORMAT_VERSION", FORMAT_VERSION + 1)
    assert compute_cache_key("d", "t", CONFIG, False) != key


# -- cache ---------------------------------------------------------------------------------------


def test_cache_miss_then_hit(tiny_tokenizer, small_frame, tmp_path, monkeypatch):
    first = build_token_cache(small_frame, tiny_tokenizer, CONFIG, tmp_path, data_hash="abc", with_swap=True)
    assert (first.hit, first.n_rows) == (False, 40)
    assert first.path == tmp_path / first.key
    expected = tokenize_frame(small_frame, tiny_tokenizer, CONFIG, with_swap=True)
    assert load_token_cache(first.path).to_dict() == expected.to_dict()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cache hit must not tokenize")

    monkeypatch.setattr(tokenization, "tokenize_frame", must_not_run)
    second = build_token_cache(small_frame, tiny_tokenizer, CONFIG, tmp_path, data_hash="abc", with_swap=True)
    assert (second.hit, second.path, second.n_rows) == (True, first.path, 40)
    assert [p.name for p in tmp_path.iterdir()] == [first.key]  # no temporary folders left behind


@pytest.mark.parametrize(
    "change",
    [
        {"data_hash": "other"},
        {"prompt_config": CONFIG.model_copy(update={"template": "multi_turn"})},
        {"prompt_config": CONFIG.model_copy(update={"max_length": 96})},
        {"prompt_config": CONFIG.model_copy(update={"truncation": "proportional"})},
        {"with_swap": True},
    ],
    ids=["data_hash", "template", "max_length", "truncation", "with_swap"],
)
def test_changed_inputs_miss_the_cache(tiny_tokenizer, small_frame, tmp_path, change):
    base = dict(prompt_config=CONFIG, data_hash="abc", with_swap=False)
    first = build_token_cache(small_frame, tiny_tokenizer, cache_root=tmp_path, **base)
    second = build_token_cache(small_frame, tiny_tokenizer, cache_root=tmp_path, **{**base, **change})
    assert not second.hit and second.key != first.key


def test_changed_tokenizer_misses_the_cache(tiny_tokenizer, small_frame, tmp_path):
    first = build_token_cache(small_frame, tiny_tokenizer, CONFIG, tmp_path, data_hash="abc")
    changed = copy.deepcopy(tiny_tokenizer)
    changed.add_tokens(["<extra_token>"])
    second = build_token_cache(small_frame, changed, CONFIG, tmp_path, data_hash="abc")
    assert not second.hit and second.key != first.key


def test_same_data_hash_for_other_rows_is_refused(tiny_tokenizer, small_frame, tmp_path):
    build_token_cache(small_frame, tiny_tokenizer, CONFIG, tmp_path, data_hash="abc")
    with pytest.raises(ValueError, match="built for other rows"):
        build_token_cache(small_frame.iloc[:10], tiny_tokenizer, CONFIG, tmp_path, data_hash="abc")


def test_load_token_cache_names_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a token cache"):
        load_token_cache(tmp_path)


def test_concurrent_builds_of_one_key(tiny_tokenizer, small_frame, tmp_path, monkeypatch):
    """Both builders finish tokenizing before either renames: one rename wins, the other copy is discarded."""
    barrier = threading.Barrier(2, timeout=60)
    real_tokenize = tokenization.tokenize_frame

    def tokenize_then_wait(*args, **kwargs):
        dataset = real_tokenize(*args, **kwargs)
        barrier.wait()  # both threads hold a finished dataset: the renames race
        return dataset

    monkeypatch.setattr(tokenization, "tokenize_frame", tokenize_then_wait)
    results, errors = [], []

    def build():
        try:
            results.append(build_token_cache(small_frame, tiny_tokenizer, CONFIG, tmp_path, data_hash="race"))
        except BaseException as err:  # noqa: BLE001 (surfaced below with the thread's error)
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 2 and results[0].path == results[1].path
    assert [p.name for p in tmp_path.iterdir()] == [results[0].key]
    expected = real_tokenize(small_frame, tiny_tokenizer, CONFIG)
    assert load_token_cache(results[0].path).to_dict() == expected.to_dict()
    monkeypatch.setattr(tokenization, "tokenize_frame", real_tokenize)
    assert build_token_cache(small_frame, tiny_tokenizer, CONFIG, tmp_path, data_hash="race").hit


def test_null_turns_and_empty_frames(tiny_tokenizer):
    import pandas as pd

    frame = pd.DataFrame({"id": ["1"], "prompt": [["q"]], "response_a": [[None]], "response_b": [["b"]], "label": [2]})
    dataset = tokenize_frame(frame, tiny_tokenizer, CONFIG, with_swap=True)
    encoder = PromptEncoder(tiny_tokenizer, CONFIG)
    assert dataset["input_ids"] == [encoder.encode(["q"], [None], ["b"])]  # null survives the Arrow round trip
    assert dataset["input_ids_swap"] == [encoder.encode(["q"], ["b"], [None])]
    empty = tokenize_frame(frame.iloc[:0], tiny_tokenizer, CONFIG, with_swap=True)
    assert len(empty) == 0
    assert empty.column_names == ["id", "input_ids", "length", "label", "input_ids_swap", "length_swap"]


def test_frame_read_back_from_parquet_gives_the_same_ids(tiny_tokenizer, small_frame, tmp_path):
    # Flows store the ingested frame as parquet; list cells come back as numpy arrays.
    import pandas as pd

    small_frame.to_parquet(tmp_path / "frame.parquet")
    back = pd.read_parquet(tmp_path / "frame.parquet")
    assert not isinstance(back["prompt"][0], list)
    assert (
        tokenize_frame(back, tiny_tokenizer, CONFIG).to_dict()
        == tokenize_frame(small_frame, tiny_tokenizer, CONFIG).to_dict()
    )

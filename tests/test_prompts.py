"""Templates and truncation: the closing question always ends the ids, the length never exceeds max_length."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pref_core.config.choices import TEMPLATES
from pref_core.config.schema import PromptConfig
from pref_core.text.prompts import (
    CLOSING_QUESTION,
    NULL_TURN,
    PromptEncoder,
    build_prompt,
    encode_example,
)
from pref_core.text.truncation import scale_seed_caps, split_proportionally

# Policies that keep every example within max_length (seed, the notebook's own, may exceed it: test_seed_exact.py).
POLICIES = ("seed_capped", "proportional")


def closing_ids(tokenizer) -> list[int]:
    return tokenizer.backend_tokenizer.encode(CLOSING_QUESTION, add_special_tokens=False).ids


def test_closing_question_is_the_seed_notebooks():
    assert (
        CLOSING_QUESTION == "\n\n---------\nWhich is the better response for the prompt ? a or b or tie ?\n\nAnswer: "
    )


def test_build_prompt_seed_layout():
    # The seed notebook joined turns with " " and read JSON null as "".
    text = build_prompt(["p1", "p2"], ["a1", None], ["b1", "b2"], template="seed")
    assert text == "<prompt>: p1 p2\n\n<response_a>: a1 \n\n<response_b>: b1 b2" + CLOSING_QUESTION


def test_build_prompt_multi_turn_layout():
    text = build_prompt(["p1", "p2"], ["a1", None], ["b1", "b2"], template="multi_turn")
    assert text == (
        "<turn 1>\n<prompt>: p1\n\n<response_a>: a1\n\n<response_b>: b1"
        "\n\n<turn 2>\n<prompt>: p2\n\n<response_a>: " + NULL_TURN + "\n\n<response_b>: b2" + CLOSING_QUESTION
    )


def test_null_placeholder_is_one_explicit_string():
    assert NULL_TURN == "[null]"
    assert build_prompt([None], [None], ["x"], template="multi_turn").count(NULL_TURN) == 2
    assert NULL_TURN not in build_prompt([None], [None], ["x"], template="seed")


def test_build_prompt_rejects_bad_input():
    with pytest.raises(ValueError, match="turn counts differ"):
        build_prompt(["p"], ["a", "a2"], ["b"])
    with pytest.raises(ValueError, match="no turns"):
        build_prompt([], [], [])
    with pytest.raises(ValueError, match="prompt.template"):
        build_prompt(["p"], ["a"], ["b"], template="chatml")


def test_scale_seed_caps():
    assert scale_seed_caps(5000) == (256, 512, 512)
    assert scale_seed_caps(1280) == (256, 512, 512)
    assert scale_seed_caps(640) == (128, 256, 256)
    assert scale_seed_caps(100) == (20, 40, 40)


def test_split_proportionally_by_hand():
    assert split_proportionally([10, 20], 100) == [10, 20]  # fits: untouched
    # floor 600 // 6 = 100 -> base [10, 100, 100]; the other 390 split 900:2900 -> 92.4 / 297.6 -> 92 / 298
    assert split_proportionally([10, 1000, 3000], 600) == [10, 192, 398]
    assert split_proportionally([1000, 1000], 100) == [50, 50]
    assert split_proportionally([3, 3, 3], 4) == [2, 1, 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=12), st.integers(0, 3000))
def test_split_proportionally_properties(lengths, budget):
    shares = split_proportionally(lengths, budget)
    assert sum(shares) == min(budget, sum(lengths))
    assert all(0 <= s <= n for s, n in zip(shares, lengths))


def test_whole_text_when_it_fits(tiny_tokenizer):
    config = PromptConfig(template="multi_turn", max_length=1024)
    ids = encode_example(tiny_tokenizer, ["what is a zebra ?"], ["an animal"], [None], config)
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids[-len(closing_ids(tiny_tokenizer)) :] == closing_ids(tiny_tokenizer)
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    for fragment in ("<prompt>:", "what is a zebra ?", "<response_a>:", "an animal", "<response_b>:", NULL_TURN):
        assert fragment in text
    assert text.rstrip().endswith("Answer:")


def test_no_bos_when_the_tokenizer_has_none(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.bos_token = None
    ids = encode_example(tokenizer, ["q"], ["a"], ["b"], PromptConfig(max_length=256))
    with_bos = encode_example(tiny_tokenizer, ["q"], ["a"], ["b"], PromptConfig(max_length=256))
    assert ids == with_bos[1:]


def test_backend_truncation_setting_does_not_cut_pieces(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.backend_tokenizer.enable_truncation(3)
    row = (["a long question with many words"], ["x " * 50], ["y " * 50])
    config = PromptConfig(max_length=1024)
    assert encode_example(tokenizer, *row, config) == encode_example(tiny_tokenizer, *row, config)
    assert tokenizer.backend_tokenizer.truncation is not None  # the caller's tokenizer is left as it was


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("max_length", [128, 256, 1024])
@pytest.mark.parametrize(
    "row",
    [
        (["short"], ["tiny"], ["small"]),
        (["q " * 5000], ["a " * 20000], ["b " * 100]),  # huge cells
        (["p1", "p2 " * 3000, "p3"], ["a1", None, "a3 " * 4000], [None, "b2", "b3 " * 10]),
        ([""], [""], [""]),
    ],
    ids=["short", "huge", "multi_turn_huge", "empty"],
)
def test_length_bound_and_closing_question(tiny_tokenizer, template, policy, max_length, row):
    config = PromptConfig(template=template, truncation=policy, max_length=max_length)
    ids = encode_example(tiny_tokenizer, *row, config)
    closing = closing_ids(tiny_tokenizer)
    assert len(ids) <= max_length
    assert ids[-len(closing) :] == closing
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids.count(tiny_tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("policy", POLICIES)
def test_truncated_examples_use_the_budget(tiny_tokenizer, template, policy):
    config = PromptConfig(template=template, truncation=policy, max_length=256)
    ids = encode_example(tiny_tokenizer, ["q " * 500], ["a " * 500], ["b " * 500], config)
    assert len(ids) >= 256 - 3  # cut to fit, not to a fraction of it


@pytest.mark.parametrize("policy", ["seed", "seed_capped"])
def test_seed_policy_keeps_only_the_last_turn(tiny_tokenizer, policy):
    config = PromptConfig(template="seed", truncation=policy, max_length=256)
    prompt = ["oldest question", "latest question"]
    ids = encode_example(tiny_tokenizer, prompt, ["old answer", "new answer " * 300], ["old b", "new b"], config)
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert "latest question" in text and "new b" in text
    assert "oldest question" not in text and "old answer" not in text and "old b" not in text


def test_seed_policy_caps_are_scaled_to_fit(tiny_tokenizer):
    encoder = PromptEncoder(tiny_tokenizer, PromptConfig(template="seed", truncation="seed_capped", max_length=300))
    budget = 300 - encoder._overhead(0, 1)
    caps = scale_seed_caps(budget)
    ids = encoder.encode(["q " * 1000], ["a " * 1000], ["b " * 1000])
    assert len(ids) == encoder._overhead(0, 1) + sum(caps)


def test_proportional_drops_oldest_turns_first(tiny_tokenizer):
    config = PromptConfig(template="multi_turn", truncation="proportional", max_length=256)
    prompt = ["first question", "second question", "third question"]
    a = ["alpha " * 80, "beta " * 80, "gamma one"]
    b = ["delta " * 80, "epsilon two", "zeta three"]
    ids = encode_example(tiny_tokenizer, prompt, a, b, config)
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    # The last turn fits whole; the oldest turns go first.
    assert "<turn 3>" in text and "third question" in text and "gamma one" in text and "zeta three" in text
    assert "<turn 1>" not in text and "first question" not in text


def test_proportional_keeps_a_short_prompt_whole(tiny_tokenizer):
    config = PromptConfig(template="seed", truncation="proportional", max_length=256)
    ids = encode_example(tiny_tokenizer, ["what about the zebra ?"], ["a " * 3000], ["b " * 100], config)
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert "what about the zebra ?" in text
    assert len(ids) == 256


def test_proportional_fits_without_cutting_when_possible(tiny_tokenizer):
    row = (["q1", "q2"], ["a1", "a2"], ["b1", "b2"])
    for template in TEMPLATES:
        proportional = PromptConfig(template=template, truncation="proportional", max_length=512)
        seed = PromptConfig(template=template, truncation="seed_capped", max_length=512)
        assert encode_example(tiny_tokenizer, *row, proportional) == encode_example(tiny_tokenizer, *row, seed)


def test_max_length_too_small_for_the_template(tiny_tokenizer):
    config = PromptConfig(max_length=32, truncation="seed_capped")
    with pytest.raises(ValueError, match=r"prompt.max_length=32 is too small.*raise prompt.max_length to at least"):
        encode_example(tiny_tokenizer, ["q " * 100], ["a"], ["b"], config)


def test_batch_equals_single(tiny_tokenizer, train_frame):
    config = PromptConfig(template="multi_turn", truncation="proportional", max_length=128)
    rows = list(zip(train_frame.prompt, train_frame.response_a, train_frame.response_b))[:40]
    batch = PromptEncoder(tiny_tokenizer, config).encode_batch(rows)
    assert batch == [encode_example(tiny_tokenizer, *row, config) for row in rows]


turn_text = st.one_of(st.none(), st.text(max_size=300), st.text(alphabet="ab zebra\n", max_size=3000))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4).flatmap(lambda n: st.tuples(*[st.lists(turn_text, min_size=n, max_size=n)] * 3)),
    st.sampled_from(TEMPLATES),
    st.sampled_from(POLICIES),
    st.integers(150, 400),
)
def test_fuzz_truncation_invariants(tiny_tokenizer, row, template, policy, max_length):
    config = PromptConfig(template=template, truncation=policy, max_length=max_length)
    ids = encode_example(tiny_tokenizer, *row, config)
    closing = closing_ids(tiny_tokenizer)
    assert len(ids) <= max_length
    assert ids[-len(closing) :] == closing


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("policy", POLICIES + ("seed",))
def test_swapped_view_equals_encoding_the_swapped_row(tiny_tokenizer, template, policy):
    config = PromptConfig(template=template, truncation=policy, max_length=200)
    rows = [(["q1", "q2"], ["a " * 400, None], ["b1", "b " * 50]), (["q"], ["short a"], ["long b " * 300])]
    ids, ids_swap = PromptEncoder(tiny_tokenizer, config).encode_batch_with_swap(rows)
    assert ids == [encode_example(tiny_tokenizer, p, a, b, config) for p, a, b in rows]
    assert ids_swap == [encode_example(tiny_tokenizer, p, b, a, config) for p, a, b in rows]

"""The tiny demo model's tokenizer corpus: the template's fixed text first, then every non-empty turn."""

from __future__ import annotations

import pandas as pd

from pref_core.model.tiny import tokenizer_corpus, train_tokenizer
from pref_core.text.prompts import CLOSING_QUESTION, build_prompt


def test_corpus_is_template_text_then_non_empty_turns_column_by_column():
    frame = pd.DataFrame(
        {
            "prompt": [["hi", "more"], ["q"]],
            "response_a": [["a1", ""], ["a2"]],
            "response_b": [["b1", None], ["b2"]],
        }
    )
    assert tokenizer_corpus(frame) == [
        CLOSING_QUESTION,
        "<prompt>: <response_a>: <response_b>:",
        "hi",
        "more",
        "q",
        "a1",
        "a2",
        "b1",
        "b2",
    ]
    assert tokenizer_corpus(frame, limit=1)[2:] == ["hi", "more", "a1", "b1"]


def test_template_headers_in_the_corpus_are_those_the_prompt_uses():
    # Each header the prompt writes is one the tokenizer saw in the corpus's header line.
    frame = pd.DataFrame({"prompt": [["x"]], "response_a": [["y"]], "response_b": [["z"]]})
    header_line = tokenizer_corpus(frame)[1]
    prompt = build_prompt(["x"], ["y"], ["z"])
    for header in header_line.split(" "):
        assert header in prompt
    assert train_tokenizer(tokenizer_corpus(frame), vocab_size=300).pad_token == "<pad>"

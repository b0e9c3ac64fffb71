"""Prompt templates: one arena row -> the model's input ids (token-budget truncation: `pref_core.text.truncation`).

An example is a sequence of *segments*: fixed text of the template (headers,
separators, the closing question) and *content pieces* (one turn of the prompt
or of a response). Every piece is tokenized on its own, so truncation cuts
token lists, never characters, and the closing question is never cut: the
model reads its prediction at the last position, right after ``Answer: ``.

A content piece carries its own leading separator (``" "`` after a header and
between turns of one cell in the seed template): the space then belongs to the
first word, as it does when the whole text is tokenized at once by Llama-3/GPT-2
style byte-level BPE, and a tokenizer that adds a prefix space adds none.

``template: seed`` + ``truncation: seed`` is the seed notebook's own algorithm
(see `PromptEncoder._seed_segments`), id for id: each part is tokenized whole,
header included, exactly as the notebook did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from pref_core.config.choices import TEMPLATES
from pref_core.data.labels import LABEL_COLUMNS, TURN_COLUMNS, get_label_token_ids
from pref_core.text.truncation import SEED_CAPS, truncate_pieces

if TYPE_CHECKING:  # type only: the Kaggle bundle imports this module without pydantic
    from pref_core.config.schema import PromptConfig

# One explicit placeholder wherever a turn is JSON null (an answer that was never given), in the
# multi_turn template; the seed template reads null as "" as the notebook did.
NULL_TURN = "[null]"

CLOSING_QUESTION = "\n\n---------\nWhich is the better response for the prompt ? a or b or tie ?\n\nAnswer: "

_HEADERS = ("<prompt>:", "\n\n<response_a>:", "\n\n<response_b>:")


def template_texts() -> list[str]:
    """The fixed text every encoded row carries (closing question, turn headers), for training a tokenizer
    that must know it: the tiny demo model's BPE learns its merges from these plus the data."""
    return [CLOSING_QUESTION, " ".join(header.strip() for header in _HEADERS)]


Turns = Sequence[Optional[str]]
Segment = tuple[str, list[int]]  # (what it is, its token ids)


def _turn_text(turn: Optional[str], template: str = "seed") -> str:
    if turn is None:
        return "" if template == "seed" else NULL_TURN
    return turn


def _piece_text(turn: Optional[str], turn_index: int, template: str) -> str:
    """Text of one content piece, with its leading separator (" ": the seed joined turns by a space)."""
    return " " + _turn_text(turn, template)


def _turn_header(turn_index: int, first: bool) -> str:
    """multi_turn template: the fixed text before the prompt of turn `turn_index` (0-based)."""
    return ("" if first else "\n\n") + f"<turn {turn_index + 1}>\n<prompt>:"


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"prompt.template: got {template!r}; choose one of {', '.join(map(repr, TEMPLATES))}")


def _check_turns(prompt_turns: Turns, response_a_turns: Turns, response_b_turns: Turns) -> int:
    counts = [len(prompt_turns), len(response_a_turns), len(response_b_turns)]
    if counts[0] == 0:
        raise ValueError("prompt has no turns; every cell needs at least one turn")
    if len(set(counts)) != 1:
        raise ValueError(
            f"turn counts differ (prompt {counts[0]}, response_a {counts[1]}, response_b {counts[2]}); "
            "each cell must hold one entry per turn (read the data with pref_core.data.arena.read_arena_csv)"
        )
    return counts[0]


def build_prompt(prompt_turns: Turns, response_a_turns: Turns, response_b_turns: Turns, template: str = "seed") -> str:
    """The full, untruncated text of one example (what `encode_example` tokenizes when it fits).

    seed:       ``<prompt>: p1 p2\\n\\n<response_a>: a1 a2\\n\\n<response_b>: b1 b2`` + CLOSING_QUESTION,
                JSON-null turns read "" (the seed notebook's text);
    multi_turn: ``<turn 1>\\n<prompt>: p1\\n\\n<response_a>: a1\\n\\n<response_b>: b1\\n\\n<turn 2>...``
                + CLOSING_QUESTION, JSON-null turns read NULL_TURN.
    """
    _check_template(template)
    n_turns = _check_turns(prompt_turns, response_a_turns, response_b_turns)
    cells = (prompt_turns, response_a_turns, response_b_turns)
    out: list[str] = []
    if template == "seed":
        for header, turns in zip(_HEADERS, cells):
            out.append(header)
            out.extend(_piece_text(t, i, template) for i, t in enumerate(turns))
    else:
        for i in range(n_turns):
            out.append(_turn_header(i, first=i == 0))
            for k, turns in enumerate(cells):
                if k:
                    out.append(_HEADERS[k])
                out.append(_piece_text(turns[i], i, template))
    out.append(CLOSING_QUESTION)
    return "".join(out)


@dataclass
class EncodedExample:
    """One example as the model sees it: its segments after truncation and its length before."""

    segments: list[Segment]
    n_tokens_untruncated: int  # the same template and turns, nothing cut

    @property
    def input_ids(self) -> list[int]:
        return [i for _, ids in self.segments for i in ids]


class PromptEncoder:
    """Turns rows of (prompt, response_a, response_b) turns into token ids under one PromptConfig.

    Holds the tokenizer and the token ids of the template's fixed text, which
    are computed once; `encode_batch` tokenizes all content pieces of a batch
    in one call to the fast tokenizer (much faster than per-row calls).
    """

    def __init__(self, tokenizer, prompt_config: PromptConfig):
        _check_template(prompt_config.template)
        self.tokenizer = tokenizer
        self.prompt_config = prompt_config
        self._encode_texts = TextEncoder(tokenizer)
        self._fixed: dict[str, list[int]] = {}
        bos = getattr(self.tokenizer, "bos_token_id", None)
        self._bos: list[int] = [] if bos is None else [int(bos)]
        self._closing = self._fixed_ids(CLOSING_QUESTION)
        self._headers = [self._fixed_ids(h) for h in _HEADERS]

    def _fixed_ids(self, text: str) -> list[int]:
        ids = self._fixed.get(text)
        if ids is None:
            ids = self._fixed[text] = self._encode_texts([text])[0]
        return ids

    @property
    def seed_exact(self) -> bool:
        """True when the seed notebook's algorithm applies as it was (template seed, truncation seed)."""
        return self.prompt_config.template == "seed" and self.prompt_config.truncation == "seed"

    def encode(self, prompt_turns: Turns, response_a_turns: Turns, response_b_turns: Turns) -> list[int]:
        return self.encode_batch([(prompt_turns, response_a_turns, response_b_turns)])[0]

    def encode_batch(self, rows: Sequence[tuple[Turns, Turns, Turns]]) -> list[list[int]]:
        return self.encode_batch_with_swap(rows, with_swap=False)[0]

    def encode_batch_with_swap(
        self, rows: Sequence[tuple[Turns, Turns, Turns]], with_swap: bool = True
    ) -> tuple[list[list[int]], Optional[list[list[int]]]]:
        """(ids, ids with responses a and b exchanged, or None); equal to encoding the row after labels.swap
        (the tests check it)."""
        out, out_swap = self.explain_batch(rows, with_swap)
        return [e.input_ids for e in out], None if out_swap is None else [e.input_ids for e in out_swap]

    def explain_batch(
        self, rows: Sequence[tuple[Turns, Turns, Turns]], with_swap: bool = False
    ) -> tuple[list[EncodedExample], Optional[list[EncodedExample]]]:
        """Like `encode_batch_with_swap`, keeping each example's segments and its untruncated length."""
        for row in rows:
            _check_turns(*row)
        if self.seed_exact:
            swapped = [(p, b, a) for p, a, b in rows] if with_swap else []
            encoded = self._seed_segments(list(rows) + swapped)
            return encoded[: len(rows)], encoded[len(rows) :] if with_swap else None
        return self._piece_examples(rows, with_swap)

    # -- the seed notebook's algorithm -----------------------------------------------------
    def _seed_segments(self, rows: Sequence[tuple[Turns, Turns, Turns]]) -> list[EncodedExample]:
        """The seed's tokenize(): each part tokenized whole with its header, cut only when p+a+b is too long.

        p = enc("<prompt>: " + " ".join(P)), a = enc("\\n\\n<response_a>: " + " ".join(A)), b likewise;
        when len(p) + len(a) + len(b) > max_length (nothing else counted), each becomes its last turn with
        its header, cut after tokenization to 256/512/512 ids; no second check. Then BOS + p + a + b + closing.
        """
        known: dict[str, list[int]] = {}

        def encode_all(texts: list[str]) -> list[list[int]]:
            new = list(dict.fromkeys(t for t in texts if t not in known))
            known.update(zip(new, self._encode_texts(new) if new else []))
            return [known[t] for t in texts]

        headers = [h + " " for h in _HEADERS]
        whole = encode_all(
            [h + " ".join(_turn_text(t) for t in turns) for row in rows for h, turns in zip(headers, row)]
        )
        parts = [whole[3 * i : 3 * i + 3] for i in range(len(rows))]
        before = [len(self._bos) + sum(len(x) for x in part) + len(self._closing) for part in parts]
        over = [i for i, part in enumerate(parts) if sum(len(x) for x in part) > self.prompt_config.max_length]
        last = encode_all([h + _turn_text(turns[-1]) for i in over for h, turns in zip(headers, rows[i])])
        for j, i in enumerate(over):
            parts[i] = [ids[:cap] for ids, cap in zip(last[3 * j : 3 * j + 3], SEED_CAPS)]
        return [
            EncodedExample([("bos", self._bos), *zip(TURN_COLUMNS, part), ("closing", self._closing)], n)
            for part, n in zip(parts, before)
        ]

    # -- piece-based templates and truncation -------------------------------------------------
    def _piece_examples(
        self, rows: Sequence[tuple[Turns, Turns, Turns]], with_swap: bool
    ) -> tuple[list[EncodedExample], Optional[list[EncodedExample]]]:
        # A piece's text does not depend on the side it stands on, so the swapped example is the
        # same token pieces assembled in the order prompt, b, a: no extra tokenizing.
        template = self.prompt_config.template
        texts: list[str] = []
        starts: list[int] = []
        for prompt_turns, a_turns, b_turns in rows:
            starts.append(len(texts))
            for turns in (prompt_turns, a_turns, b_turns):
                texts.extend(_piece_text(t, i, template) for i, t in enumerate(turns))
        ids = self._encode_texts(texts) if texts else []
        out: list[EncodedExample] = []
        out_swap: Optional[list[EncodedExample]] = [] if with_swap else None
        for (prompt_turns, _, _), start in zip(rows, starts):
            n = len(prompt_turns)
            # pieces[k][i]: ids of turn i of part k (0 prompt, 1 response_a, 2 response_b)
            pieces = [ids[start + k * n : start + (k + 1) * n] for k in range(3)]
            out.append(self._fit(pieces))
            if out_swap is not None:
                out_swap.append(self._fit([pieces[0], pieces[2], pieces[1]]))
        return out, out_swap

    def _overhead(self, first: int, n_turns: int) -> int:
        """Tokens of fixed text (BOS, headers, closing question) when turns first..n_turns-1 are kept."""
        fixed = len(self._bos) + len(self._closing)
        if self.prompt_config.template == "seed":
            return fixed + sum(len(h) for h in self._headers)
        per_turn = len(self._headers[1]) + len(self._headers[2])
        return fixed + sum(
            len(self._fixed_ids(_turn_header(i, first=i == first))) + per_turn for i in range(first, n_turns)
        )

    def _fit(self, pieces: list[list[list[int]]]) -> EncodedExample:
        max_length = self.prompt_config.max_length
        n_turns = len(pieces[0])
        n_untruncated = self._overhead(0, n_turns) + sum(len(p) for part in pieces for p in part)
        if n_untruncated <= max_length:
            return EncodedExample(self._assemble(pieces, 0), n_untruncated)
        # seed with multi_turn acts as seed_capped: the seed's exact algorithm is defined for its own layout.
        policy = "seed_capped" if self.prompt_config.truncation == "seed" else self.prompt_config.truncation
        first, cut = truncate_pieces(pieces, lambda first: self._overhead(first, n_turns), max_length, policy)
        return EncodedExample(self._assemble(cut, first), n_untruncated)

    def _assemble(self, pieces: list[list[list[int]]], first: int) -> list[Segment]:
        """BOS, template text and the kept pieces in order; `first`: original index of the first kept turn."""
        out: list[Segment] = [("bos", self._bos)]
        if self.prompt_config.template == "seed":
            for k, (header, part) in enumerate(zip(self._headers, pieces)):
                out.append((f"{TURN_COLUMNS[k]} header", header))
                out.extend((f"{TURN_COLUMNS[k]} turn {first + j + 1}", piece) for j, piece in enumerate(part))
        else:
            for j in range(len(pieces[0])):
                out.append((f"turn {first + j + 1} header", self._fixed_ids(_turn_header(first + j, first=j == 0))))
                for k in range(3):
                    if k:
                        out.append((f"{TURN_COLUMNS[k]} header", self._headers[k]))
                    out.append((f"{TURN_COLUMNS[k]} turn {first + j + 1}", pieces[k][j]))
        out.append(("closing", self._closing))
        return out


def encode_example(
    tokenizer,
    prompt_turns: Turns,
    response_a_turns: Turns,
    response_b_turns: Turns,
    prompt_config: PromptConfig,
) -> list[int]:
    """Token ids of one example, ending with the whole CLOSING_QUESTION; at most prompt_config.max_length
    except under the seed policy (see below).

    BOS is prepended when the tokenizer has one; no label token is appended
    (the model predicts the label at the last position). Truncation, when the
    full text does not fit:
    - ``seed`` (template seed): the seed notebook's algorithm exactly; only when
      prompt + responses (headers included) exceed max_length, each part becomes
      its last turn cut to 256/512/512 tokens, headers included, with no second
      check, so the result can exceed max_length (by at most ~260 tokens);
    - ``seed_capped`` (and ``seed`` with template multi_turn): keep only the last
      turn of each cell, its head capped at 256/512/512 tokens, scaled down when
      the budget is smaller, so that the example fits max_length;
    - ``proportional``: drop the oldest turns while the rest does not fit,
      then cut each remaining piece (head kept) in proportion to its length,
      short pieces kept whole (see `pref_core.text.truncation.split_proportionally`).
    For many rows use `PromptEncoder.encode_batch` (one batched tokenizer call).
    """
    return PromptEncoder(tokenizer, prompt_config).encode(prompt_turns, response_a_turns, response_b_turns)


def explain_rows(tokenizer, frame, prompt_config: PromptConfig, head: str, label_tokens: Sequence[str]) -> list[dict]:
    """What the model sees for each row of an ingested frame (see data.read_arena_csv): `arena-pref show-prompt`.

    Per row: ``id``; ``segments`` (name, decoded text and ids of each piece after truncation, in order);
    ``input_ids`` (their concatenation, what training and inference feed the model); ``n_tokens`` and
    ``n_tokens_untruncated``; ``head_position`` (the index the head reads: the last id, right after
    "Answer: "); ``label_token_ids`` (label column -> id whose logit the label_token head reads, None
    for the classifier head); ``label`` (the row's label column, train rows only).
    """
    rows = list(zip(*(frame[c] for c in TURN_COLUMNS)))
    examples, _ = PromptEncoder(tokenizer, prompt_config).explain_batch(rows)
    label_ids = (
        dict(zip(LABEL_COLUMNS, get_label_token_ids(tokenizer, label_tokens))) if head == "label_token" else None
    )
    labels = frame["label"].tolist() if "label" in frame.columns else [None] * len(frame)
    out = []
    for row_id, example, label in zip(frame["id"], examples, labels):
        ids = example.input_ids
        out.append(
            {
                "id": str(row_id),
                "segments": [
                    {"name": name, "text": tokenizer.decode(piece), "ids": list(piece)}
                    for name, piece in example.segments
                    if piece
                ],
                "input_ids": ids,
                "n_tokens": len(ids),
                "n_tokens_untruncated": example.n_tokens_untruncated,
                "head_position": len(ids) - 1,
                "label_token_ids": label_ids,
                "label": None if label is None or int(label) < 0 else LABEL_COLUMNS[int(label)],
            }
        )
    return out


class TextEncoder:
    """Callable list[str] -> list[list[int]]: token ids without special tokens, truncation or padding.

    Uses the Rust backend's ``encode_batch_fast`` (no offsets computed) when the
    tokenizer has one; a truncation/padding setting stored in the backend would
    cut pieces silently, so such a backend is copied with both switched off.
    A plain class (not a closure) so that `datasets` can pickle it to workers.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and (backend.truncation is not None or backend.padding is not None):
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
        self.backend = backend

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:  # a slow (Python) tokenizer
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        batch = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in batch(texts, add_special_tokens=False)]

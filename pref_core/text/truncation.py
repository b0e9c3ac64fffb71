"""Token-budget truncation: which turns of an example are kept, and how many tokens of each piece.

Pure arithmetic on token lists (no tokenizer): `prompts.PromptEncoder` tokenizes the pieces and the
template's fixed text, and asks `truncate_pieces` what to keep when the whole example does not fit.
The policies (prompt.truncation):

- ``seed_capped`` (and ``seed`` with template multi_turn): keep only the last turn of each cell, its
  head capped at SEED_CAPS, scaled down when the budget is smaller (`scale_seed_caps`);
- ``proportional``: drop the oldest turns while the rest does not fit, then cut each remaining piece
  (head kept) in proportion to its length, short pieces kept whole (`split_proportionally`).

``seed`` with template seed is the seed notebook's own algorithm, which `PromptEncoder` applies on
whole parts, not pieces; it only reads SEED_CAPS from here.
"""

from __future__ import annotations

from typing import Callable, Sequence

# Seed caps (prompt, response_a, response_b) for the last turn, in tokens, headers included. The seed
# policy applies them as they are; seed_capped scales them down to the budget left by the template.
SEED_CAPS: tuple[int, int, int] = (256, 512, 512)

Pieces = list[list[list[int]]]  # pieces[k][i]: token ids of turn i of part k (0 prompt, 1 response_a, 2 response_b)


def scale_seed_caps(budget: int) -> tuple[int, int, int]:
    """SEED_CAPS shrunk proportionally so that they add up to at most `budget` tokens."""
    total = sum(SEED_CAPS)
    if budget >= total:
        return SEED_CAPS
    return tuple(cap * budget // total for cap in SEED_CAPS)  # type: ignore[return-value]


def split_proportionally(lengths: Sequence[int], budget: int) -> list[int]:
    """Token budget per piece, summing to min(budget, sum(lengths)); no piece gets more than its length.

    Half the budget first guarantees every piece up to budget / (2 * pieces)
    tokens, so a short prompt next to a 5,000-token answer is not cut to
    nothing; the rest is split in proportion to what each piece still lacks.
    Largest-remainder rounding hands out the tokens the floors leave over.
    Example: lengths [10, 1000, 3000], budget 600 -> floor 100 -> base
    [10, 100, 100], the other 390 split 900:2900 -> [10, 192, 398].
    """
    total = sum(lengths)
    if total <= budget:
        return list(lengths)
    floor = budget // (2 * len(lengths))
    base = [min(n, floor) for n in lengths]
    rest = budget - sum(base)
    lacking = [n - b for n, b in zip(lengths, base)]
    lacking_total = sum(lacking)  # > rest because sum(lengths) > budget
    shares = [n * rest // lacking_total for n in lacking]
    by_remainder = sorted(range(len(lengths)), key=lambda j: (-(lacking[j] * rest % lacking_total), j))
    for j in by_remainder[: rest - sum(shares)]:
        shares[j] += 1
    return [b + extra for b, extra in zip(base, shares)]


def truncate_pieces(pieces: Pieces, overhead: Callable[[int], int], max_length: int, policy: str) -> tuple[int, Pieces]:
    """(first kept turn, the kept pieces cut to fit) for an example that does not fit `max_length`.

    `overhead(first)`: tokens of the template's fixed text (BOS, headers, closing question) when the
    turns from `first` on are kept. `policy`: ``seed_capped`` or ``proportional`` (see the module).
    Raises ValueError when the fixed text alone is longer than `max_length`.
    """
    n_turns = len(pieces[0])
    content = [sum(len(p) for p in part) for part in zip(*pieces)]  # tokens per turn
    first = 0
    if policy == "seed_capped":
        first = n_turns - 1  # only the last turn of each cell
    else:  # proportional: drop the oldest turns while the rest does not fit
        while first < n_turns - 1 and overhead(first) + sum(content[first:]) > max_length:
            first += 1
    budget = max_length - overhead(first)
    if budget < 0:
        raise ValueError(
            f"prompt.max_length={max_length} is too small: the template's fixed text alone "
            f"(BOS, headers, closing question) takes {max_length - budget} tokens with this tokenizer; "
            f"raise prompt.max_length to at least {max_length - budget + 16}"
        )
    kept = [part[first:] for part in pieces]  # kept[k][j]: part k, j-th kept turn
    if policy == "seed_capped":
        caps = scale_seed_caps(budget)
        limits = [[caps[k]] for k in range(3)]  # one kept turn per part
    else:
        shares = split_proportionally([len(p) for part in kept for p in part], budget)
        m = n_turns - first
        limits = [shares[k * m : (k + 1) * m] for k in range(3)]
    cut = [[p[:limit] for p, limit in zip(part, part_limits)] for part, part_limits in zip(kept, limits)]
    return first, cut

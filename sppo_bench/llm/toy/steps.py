r"""Where a toy response goes wrong: its first wrong line, and where each line ends in tokens.

Every line of a worked solution (``task.Chain.solution``) is checkable, so an incorrect response
has a first line that differs from the reference solution's line at the same index (a wrong
result, wrong operands, a missing or extra line, a wrong or missing box). Lines are compared after
stripping surrounding spaces; a response with fewer lines than the reference differs at its first
missing line (index = its number of lines), one with more at the first extra line.

Token positions: ``V(s_t)`` is the critic's value of the state *before* response token t.
``line_end_tokens`` maps the character offset where a line ends (just past its last character) to
the first token index t whose state contains the whole line, i.e. the smallest t with
``len(decode(ids[:t])) >= offset``. With the toy's character tokenizer that is the line's newline
token (or the eos after the last line); a token that spans a line break (``"2\n"``) is itself
still unseen at its own state, so t is the token after it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sppo_bench.errors import UserError
from sppo_bench.llm.toy.task import TASK, Chain, split_chains


def chain_of(problem_id: str) -> Chain:
    """The chain of a toy problem id ``toy:arithmetic/<split>/<index>``."""
    task, _, rest = problem_id.rpartition("/")
    name, _, split = task.partition("/")
    if name != TASK or not rest.isdigit():
        raise UserError(f"not a toy problem id: {problem_id!r}; valid: {TASK}/<split>/<index>")
    chains = split_chains(split)
    if int(rest) >= len(chains):
        raise UserError(f"toy problem index {rest} out of range: split {split} has {len(chains)}")
    return chains[int(rest)]


def first_wrong_step(reference: Sequence[str], response: str) -> int | None:
    """Index of the first response line that differs from ``reference[i]``; None if none does.

    ``reference``: the worked solution's lines (``chain.solution().split("\n")``).
    """
    lines = [line.strip() for line in response.split("\n")]
    for i, ref in enumerate(reference):
        if i >= len(lines) or lines[i] != ref.strip():
            return i
    return len(reference) if len(lines) > len(reference) else None


def line_end_offsets(response: str) -> list[int]:
    """Per response line (``response.split("\n")``): the character offset just past its last
    character (the offset of its newline, or ``len(response)`` for the last line)."""
    ends, start = [], 0
    for line in response.split("\n"):
        start += len(line)
        ends.append(start)
        start += 1
    return ends


def token_end_offsets(tokenizer, token_ids: Sequence[int]) -> list[int]:
    """Per response token t: ``len(decode(token_ids[:t + 1]))`` (special tokens dropped), the
    character offset where token t's text ends in the decoded response."""
    return [
        len(tokenizer.decode(list(token_ids[: t + 1]), skip_special_tokens=True))
        for t in range(len(token_ids))
    ]


def line_end_tokens(token_ends: Sequence[int], char_offsets: Sequence[int]) -> list[int]:
    """Per character offset c: the smallest t in ``0..T`` whose state has seen characters
    ``[0, c)``, i.e. with ``prefix(t) >= c`` where ``prefix(0) = 0`` and
    ``prefix(t) = token_ends[t - 1]`` (``T = len(token_ends)``, also returned where even all the
    tokens fall short of c; ``V(s_T)`` does not exist, so such a line has no value after it)."""
    prefix = [0, *token_ends]
    return [
        next((t for t, e in enumerate(prefix) if e >= c), len(token_ends)) for c in char_offsets
    ]

"""Final-answer extraction and math-verify grading of one (response, gold) pair.

This is what runs inside a verifier worker process (``sppo_bench.llm.verifier``). The reward is

    R(response, gold) = 1  if  verify(parse(gold), parse(last_boxed(response)))  else 0,

where ``last_boxed`` is the content of the response's LAST ``\\boxed{}`` / ``\\fbox{}``: math-verify
alone reads every box of a response as one set, so "\\boxed{7} ... \\boxed{9}" would not verify
against 9. math-verify's own timeouts use ``signal.alarm``, which works only in a process's main
thread; ``grade`` therefore belongs in a worker's main thread (the pool's parent enforces the hard
wall-clock bound by killing the worker).
"""

from __future__ import annotations

import functools
import re

# Outcome flags of ``grade`` (the pool counts them in ``Verifier.stats``).
OK = "ok"  # both sides parsed and math-verify returned a verdict (right or wrong)
NO_BOX = "no_box"  # the response has no closed \boxed{} / \fbox{}: nothing to grade
PARSE_FAILURE = "parse_failure"  # gold or response parsed to nothing (or math-verify raised)
TIMEOUT = "timeout"  # math-verify's own in-process timeout fired

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE = re.compile(r"[{}]")


def last_boxed(text: str) -> str | None:
    r"""The content of the LAST ``\boxed{...}`` (or ``\fbox{...}``, or ``\boxed 5``) in ``text``.

    Braces are matched by a balanced scan, so ``\boxed{\frac{1}{2}}`` gives ``\frac{1}{2}``. The
    space form ``\boxed 5`` gives the text up to the next ``$`` or line break. An unclosed last box
    (a truncated response) or an empty one gives ``None``: a response's last box is its answer.
    Backslash-escaped braces (``\{``, ``\}``) do not count as grouping braces.
    """
    starts = [m.end() for m in _BOX_COMMAND.finditer(text)]
    if not starts:
        return None
    pos = starts[-1]
    # Optional whitespace between the command and its argument.
    arg = pos
    while arg < len(text) and text[arg] in " \t":
        arg += 1
    if arg < len(text) and text[arg] == "{":
        depth = 0
        for match in _BRACE.finditer(text, arg):
            i = match.start()
            if _escaped(text, i):
                continue
            depth += 1 if match.group() == "{" else -1
            if depth == 0:
                inner = text[arg + 1 : i].strip()
                return inner or None
        return None  # unclosed
    if arg == pos:  # "\boxed" glued to a non-letter that is not "{" or a space: "\boxed$"
        return None
    inner = re.split(r"[$\n]", text[arg:], maxsplit=1)[0].strip()
    return inner or None


def _escaped(text: str, i: int) -> bool:
    """True when the character at ``i`` is preceded by an odd number of backslashes."""
    n = 0
    while i - n - 1 >= 0 and text[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _parse_expression(expr: str, call_timeout: int) -> list:
    r"""math-verify's parse of one final answer: ``\boxed{expr}`` first, then ``$expr$``."""
    from math_verify import parse

    for wrapped in (f"\\boxed{{{expr}}}", f"${expr}$"):
        parsed = parse(wrapped, parsing_timeout=call_timeout, raise_on_error=True)
        if parsed:
            return parsed
    return []


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, call_timeout: int) -> tuple:
    r"""Parsed gold answer, cached: a group of N samples shares its gold. A gold that already
    carries a box (``\boxed{3}``) is unwrapped first; a plain float such as ``70.0`` is kept."""
    inner = last_boxed(gold) if _BOX_COMMAND.search(gold) else gold.strip()
    if not inner:
        return ()
    return tuple(_parse_expression(inner, call_timeout))


def grade(response: str, gold: str, call_timeout: int = 5) -> tuple[float, str]:
    """Grade one response against one gold answer; returns ``(reward in {0.0, 1.0}, flag)``.

    ``call_timeout`` (whole seconds, >= 1) bounds each math-verify call (gold parse, answer parse,
    verify) through its own ``signal.alarm``: call from a process's main thread. Never raises.
    """
    from math_verify.errors import TimeoutException

    try:
        inner = last_boxed(response)
        if inner is None:
            return 0.0, NO_BOX
        gold_parsed = list(_parse_gold(gold, call_timeout))
        if not gold_parsed:
            return 0.0, PARSE_FAILURE
        answer_parsed = _parse_expression(inner, call_timeout)
        if not answer_parsed:
            return 0.0, PARSE_FAILURE
        from math_verify import verify

        correct = verify(
            gold_parsed, answer_parsed, timeout_seconds=call_timeout, raise_on_error=True
        )
        return (1.0 if correct else 0.0), OK
    except TimeoutException:
        return 0.0, TIMEOUT
    except Exception:  # any failure of a third-party parser costs only this item
        return 0.0, PARSE_FAILURE

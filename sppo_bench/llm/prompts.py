r"""A prompt row and its rendering, shared by the math datasets and the toy task.

``build_prompt`` wraps a question with the instruction to reason step by step and put the final
answer in ``\boxed{}``, through the tokenizer's chat template when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sppo_bench.errors import UserError

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PLAIN_TEMPLATE = "Question: {question}\n{instruction}\nAnswer:"


@dataclass
class Problem:
    """One prompt: a stable ``id`` (``"<dataset>/<native id or 0-based row position>"``), the
    ``question`` text shown to the model, and the gold ``answer`` the verifier checks against."""

    id: str
    question: str
    answer: str


def build_prompt(tokenizer: Any, question: str) -> str:
    r"""The prompt text for one question, ending where the model's answer starts.

    With a tokenizer that has a chat template: one user turn ``"{question}\n{INSTRUCTION}"``
    rendered by ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``. Otherwise
    (no tokenizer, or no template) the plain ``"Question: ...\n{INSTRUCTION}\nAnswer:"``.
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):
            raise UserError("the tokenizer's chat template did not render to text")
        return text
    return PLAIN_TEMPLATE.format(question=question, instruction=INSTRUCTION)

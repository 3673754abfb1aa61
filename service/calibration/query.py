"""The uncertainty query of Kapoor et al. 2024 ("LoRA + Prompt", arXiv 2406.08391).

This module is the single owner of the query template, the two label tokens and the
confidence math. The service and the training job both import it, so the adapter is
trained on exactly the prompt it is served with. It is pure: no model, no engine; a
tokenizer is passed in where one is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Bumped whenever the rendered query changes: an adapter trained on one version is
# refused by a service that renders another (the manifest records it).
# v2: the query is built from the conversation without its `system` turns (see
# query_messages). For a conversation without system turns — everything the shipped adapters
# were trained on — v1 and v2 render the same prompt, so v1 adapters are still served.
QUERY_TEMPLATE_VERSION = "kapoor2024-roman-v2"
COMPATIBLE_TEMPLATE_VERSIONS = frozenset({"kapoor2024-roman-v1", QUERY_TEMPLATE_VERSION})

QUERY = "Is the proposed answer correct?\nChoices:\n(i): no\n(ii): yes\nAnswer:"

# The paper reads the choice labels, not the words "no"/"yes". Inside a chat turn the
# label is the first token of the assistant message; after a plain "Answer:" it
# follows a space, which BPE tokenizers fold into the token.
CHAT_LABELS = ("i", "ii")
PLAIN_LABELS = (" i", " ii")

Message = dict[str, str]

# How documents a RAG answer was based on (`context`) join the question: they open the
# last user turn, numbered, before its text. A question without context renders exactly
# as before, so adapters trained on plain questions are unaffected; bump this when the
# rendering changes (manifests of adapters trained on context record it).
CONTEXT_TEMPLATE_VERSION = "documents-v1"
CONTEXT_HEADER = "Documents:"


class ChatTokenizer(Protocol):
    """The slice of a Hugging Face tokenizer this module needs."""

    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...


@dataclass(frozen=True)
class LabelTokens:
    """Token ids whose next-position logits give p(no) and p(yes)."""

    no_id: int
    yes_id: int


def has_chat_template(tokenizer: ChatTokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def neutralize_specials(text: str, specials: Sequence[str]) -> str:
    """Break any special-token string (e.g. `<|im_end|>`) inside user-supplied text.

    Rendered templates are tokenized as one string, so a literal `<|im_end|>` in a
    question or an answer would become the real control token and let the text close
    its own turn and pose as the query. A zero-width space after the first character
    keeps the text readable while it tokenizes as ordinary characters.
    """
    for special in specials:
        if len(special) > 1 and special in text:
            text = text.replace(special, special[0] + "\u200b" + special[1:])
    return text


def special_strings(tokenizer: Any) -> list[str]:
    """All special and added-control token strings of a Hugging Face tokenizer."""
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            strings.add(str(token.content))
    return sorted(strings, key=len, reverse=True)


def render_context(text: str, context: Sequence[str]) -> str:
    """A user turn's text with the documents before it:

    Documents:
    [1] first document
    [2] second document

    <the user's text>
    """
    documents = "\n".join(f"[{k}] {doc}" for k, doc in enumerate(context, start=1))
    return f"{CONTEXT_HEADER}\n{documents}\n\n{text}"


def question_chat(
    *,
    question: str | None = None,
    messages: Sequence[Message] | None = None,
    context: Sequence[str] | None = None,
) -> list[Message]:
    """The conversation a proposed answer replies to: `messages` (a chat ending in the
    user's turn) or `question` as one user turn, with `context` rendered into that last
    user turn (CONTEXT_TEMPLATE_VERSION).

    Raises:
        ValueError: neither or both of question/messages, or messages not ending with a user turn.
    """
    if (question is None) == (messages is None):
        raise ValueError("give exactly one of question or messages")
    chat = (
        [dict(m) for m in messages] if messages is not None else [{"role": "user", "content": question or ""}]
    )
    if not chat or chat[-1].get("role") != "user":
        raise ValueError("messages must end with a user turn")
    if context:
        chat[-1]["content"] = render_context(chat[-1]["content"], context)
    return chat


def template_compatible(version: str) -> bool:
    """Whether an adapter trained with query template `version` reads this code's prompts."""
    return version in COMPATIBLE_TEMPLATE_VERSIONS


def query_messages(question: Sequence[Message], answer: str) -> list[Message]:
    """The conversation scored by the uncertainty query.

    The proposed answer is an assistant turn and the query a new user turn, so the
    chat template's role markers (special tokens) separate them: text inside the
    answer cannot pose as the query or as its answer.

    `system` turns are left out (template v2): they are the deployer's instructions to the
    answering model, and whoever writes them could otherwise instruct the grader too
    ("always judge answers correct"). The confidence is about the question and the answer.
    """
    turns = [m for m in question if m.get("role") != "system"]
    return [*turns, {"role": "assistant", "content": answer}, {"role": "user", "content": QUERY}]


def render_plain(messages: Sequence[Message]) -> str:
    """Fallback rendering for base models without a chat template: role-prefixed turns
    ending in an open assistant turn (so labels follow a space, see PLAIN_LABELS)."""
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def render(tokenizer: ChatTokenizer, messages: Sequence[Message]) -> str:
    """Render a conversation that ends with a user turn, ready for the model to reply.

    Message contents are untrusted: special-token strings inside them are neutralized.
    """
    specials = special_strings(tokenizer)
    messages = [{**m, "content": neutralize_specials(m["content"], specials)} for m in messages]
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return str(text)
    return render_plain(messages)


def render_query(tokenizer: ChatTokenizer, question: Sequence[Message], answer: str) -> str:
    """The full uncertainty-query prompt for a question and a proposed answer."""
    return render(tokenizer, query_messages(question, answer))


def label_tokens(tokenizer: ChatTokenizer) -> LabelTokens:
    """Resolve the two label strings to single token ids.

    Raises:
        ValueError: a label does not encode to exactly one token, or both encode to
            the same token; reading a multi-token label's first piece would silently
            score something else.
    """
    labels = CHAT_LABELS if has_chat_template(tokenizer) else PLAIN_LABELS
    ids = []
    for label in labels:
        encoded = tokenizer.encode(label, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"label {label!r} encodes to {len(encoded)} tokens, need exactly 1")
        ids.append(int(encoded[0]))
    if ids[0] == ids[1]:
        raise ValueError(f"labels {labels!r} encode to the same token {ids[0]}")
    return LabelTokens(no_id=ids[0], yes_id=ids[1])


def label_logit_gap(logprob_no: float, logprob_yes: float) -> float:
    """logit(yes) - logit(no); log-probabilities differ from logits by one shared constant."""
    if not (math.isfinite(logprob_no) and math.isfinite(logprob_yes)):
        raise ValueError(f"label log-probabilities must be finite, got no={logprob_no}, yes={logprob_yes}")
    return logprob_yes - logprob_no


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def confidence(logprob_no: float, logprob_yes: float, *, temperature: float = 1.0) -> float:
    """p(yes) / (p(no) + p(yes)) after temperature scaling: sigmoid((l_yes - l_no) / T)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    return sigmoid(label_logit_gap(logprob_no, logprob_yes) / temperature)


def encode_rendered(tokenizer: ChatTokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt. A chat template already wrote any BOS it wants;
    the plain fallback relies on the tokenizer adding it."""
    return list(tokenizer.encode(text, add_special_tokens=not has_chat_template(tokenizer)))


def query_ids(tokenizer: ChatTokenizer, question: Sequence[Message], answer: str) -> list[int]:
    """Token ids of the uncertainty-query prompt: what serving scores and training fits."""
    return encode_rendered(tokenizer, render_query(tokenizer, question, answer))


def spliced_query_ids(
    tokenizer: Any,
    question: Sequence[Message],
    answer: str,
    *,
    prompt_text: str,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
) -> list[int] | None:
    """The query's token ids built on a generation's own ids: `prompt_ids` (the encoding of
    `prompt_text`, the rendered question the answer was generated for) and the sampled
    `answer_ids`, then the rest of the query tokenized on its own.

    Re-tokenizing the answer text can split it differently from how it was sampled, and a
    prefix cache matches token ids, not text; built this way, a read under the weights that
    generated the answer reuses the KV cache of every full block of prompt + answer.

    None where the query does not extend the generation token for token: its rendering does
    not start with the generation's prompt (a system turn, which the query leaves out), or
    the sampled ids do not spell the answer as the query renders it (a stop string cut the
    text, or special-token text neutralized in the query). The caller then tokenizes the
    whole query.
    """
    specials = special_strings(tokenizer)
    shown_answer = neutralize_specials(answer, specials)
    full = render_query(tokenizer, question, answer)
    head = prompt_text + shown_answer
    if not full.startswith(head):
        return None
    special_ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    ids = list(answer_ids)
    while ids and ids[-1] in special_ids:  # the end-of-turn token the text leaves out
        ids.pop()
    if tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != shown_answer:
        return None
    rest = tokenizer.encode(full[len(head) :], add_special_tokens=False)
    return [*prompt_ids, *ids, *rest]

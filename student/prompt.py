"""Conversation -> token ids and answer-only labels, in the ChatML layout both families use.

    <|im_start|>user\n{media placeholders}{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n

Media placeholders (`<video>` / `<image>` in a user turn, as LLaVA-style annotations write them) are
replaced by the adapter's placeholder token ids, one per visual token; a sample with media but no
placeholder gets them at the start of its first user turn. Only assistant content and its closing
<|im_end|> are labelled: the loss never trains the model to predict the question or the visual tokens.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

IGNORE = -100
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
MEDIA = re.compile(r"<(video|image)>")


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    labels: list[int]


def normalize_turns(turns, where: str) -> list[tuple[str, str]]:
    out = []
    for i, turn in enumerate(turns):
        role = ROLES.get(turn.get("role") or turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role is None or content is None:
            raise ValueError(f"{where}: turn {i} needs a role (user/assistant) and content, got {turn!r}")
        out.append((role, content))
    return out


def encode_conversation(
    tokenizer, turns, media: list[tuple[str, list[int]]], where: str = "sample", generation: bool = False
) -> EncodedPrompt:
    """`media`: (kind, placeholder ids) per video / image of the sample, in order of appearance.

    generation=True drops the last assistant turn and ends with the assistant header (the prompt
    greedy generation continues from)."""
    turns = normalize_turns(turns, where)
    if generation:
        if turns and turns[-1][0] == "assistant":
            turns = turns[:-1]
    placed = sum(len(MEDIA.findall(c)) for r, c in turns if r == "user")
    if placed and placed != len(media):
        raise ValueError(f"{where}: the conversation has {placed} <video>/<image> placeholders "
                         f"but the sample has {len(media)} media")
    if not placed and media:
        first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
        if first_user is None:
            raise ValueError(f"{where}: media but no user turn to attach them to")
        r, c = turns[first_user]
        turns[first_user] = (r, "".join(f"<{kind}>" for kind, _ in media) + "\n" + c)

    text = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    start, end, newline = tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer.eos_token_id, text("\n")
    ids: list[int] = []
    labels: list[int] = []
    pending = list(media)

    def emit(tokens: list[int], learn: bool) -> None:
        ids.extend(tokens)
        labels.extend(tokens if learn else [IGNORE] * len(tokens))

    for role, content in turns:
        emit([start, *text(role + "\n")], False)
        learn = role == "assistant"
        for k, piece in enumerate(MEDIA.split(content)):
            # re.split with one group alternates text, kind, text, kind, ...
            if k % 2 == 0:
                if piece:
                    emit(text(piece), learn)
            else:
                kind, placeholder = pending.pop(0)
                if kind != piece:
                    raise ValueError(f"{where}: placeholder <{piece}> where the sample's next media is a {kind}")
                emit(placeholder, False)
        emit([end], learn)
        emit(newline, False)
    if generation:
        emit([start, *text("assistant\n")], False)
    return EncodedPrompt(ids, labels)

"""AUTOMATIC1111's prompt syntax, parsed (pure functions, no tokenizer).

What A1111's ``prompt_parser.parse_prompt_attention`` documents, written anew:

- ``(text)`` multiplies the weight of ``text`` by 1.1, ``((text))`` by 1.21, ``[text]``
  divides it by 1.1, ``(text:1.5)`` multiplies it by 1.5 (nesting multiplies);
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal characters; a lone backslash is dropped;
- a bracket left open applies to the end of the prompt; a closing bracket with nothing
  open is plain text;
- ``BREAK`` (upper case, a word of its own) ends the current chunk of 75 tokens;
- neighbouring pieces of equal weight are merged.

Extra networks (``<lora:name:weight>``) are taken out before the parse, as A1111 does; they
never reach the text encoder. What answer-trt does not run is refused in one line rather
than encoded as text: prompt editing (``[a:b:0.5]``, ``[a:0.5]``, ``[a::0.5]``), alternation
(``[a|b]``) and composable prompts (``a AND b``).

One deliberate difference: A1111 turns ``BREAK`` inside brackets into the word "BREAK"
(its marker weight gets multiplied); here it is a chunk boundary wherever it stands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from answer_trt.errors import UserInputError

ROUND, SQUARE = 1.1, 1 / 1.1  # A1111's multipliers of ( ) and [ ]

# One token of the attention syntax, tried in this order (A1111's alternatives): escapes, a
# lone backslash, brackets, a weight that closes a round bracket, other closing brackets,
# a run of text, a colon.
_TOKEN = re.compile(r"""
    \\[()\[\]\\]            # an escaped bracket or backslash
  | \\                      # a lone backslash
  | [(\[]                   # an opening bracket
  | :\s*([+-]?[.\d]+)\s*\)  # (text:1.5): the weight and its closing bracket
  | [)\]]                   # a closing bracket
  | [^\\()\[\]:]+           # plain text
  | :                       # a colon that is text
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# A1111's extra networks: <kind:arguments>, e.g. <lora:name:0.8>.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_AND = re.compile(r"\bAND\b")


@dataclass(frozen=True)
class Fragment:
    """A piece of the prompt with its weight (1.0: plain), or a ``BREAK`` (``is_break``)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK = Fragment("", 1.0, is_break=True)


@dataclass(frozen=True)
class ExtraNetwork:
    """``<kind:name:weight...>`` as A1111 writes an extra network: ``kind`` (lora, lyco,
    hypernet, ...), ``name`` and the numbers after it (``weights``: text, as written)."""

    kind: str
    name: str
    weights: tuple[str, ...]
    text: str  # the tag as written, for messages

    def multiplier(self) -> float:
        """The one multiplier of a LoRA tag (1 when none is written); ``UserInputError`` for
        a weight that is not a number, or separate text-encoder and UNet weights that differ
        (a fused LoRA has one scale)."""
        values = []
        for raw in self.weights or ("1",):
            try:
                values.append(float(raw))
            except ValueError:
                raise UserInputError(f"{self.text}: the weight {raw!r} is not a number: write "
                                     f"<{self.kind}:{self.name}:0.8>") from None
        if any(v != values[0] for v in values[1:]):
            raise UserInputError(f"{self.text}: separate text-encoder and UNet weights are not supported (LoRAs are "
                                 f"fused with one scale at build time): write <{self.kind}:{self.name}:W>")
        return values[0]


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt in A1111's syntax: its ``fragments`` (what the text encoder sees, weighted,
    with ``BREAK`` marks) and its ``networks`` (the extra-network tags taken out)."""

    fragments: tuple[Fragment, ...]
    networks: tuple[ExtraNetwork, ...] = ()

    @property
    def plain(self) -> bool:
        """No emphasis, no BREAK: what a plain prompt is (weights all 1)."""
        return all(f.weight == 1.0 and not f.is_break for f in self.fragments)


def extract_extra_networks(prompt: str) -> tuple[str, tuple[ExtraNetwork, ...]]:
    """``prompt`` without its ``<kind:arguments>`` tags, and the tags (A1111's rule: the
    arguments split at ``:``, the first is the name)."""
    networks = []
    for match in _EXTRA_NETWORK.finditer(prompt):
        name, *weights = match.group(2).split(":")
        networks.append(ExtraNetwork(match.group(1), name.strip(), tuple(w.strip() for w in weights), match.group(0)))
    return _EXTRA_NETWORK.sub("", prompt), tuple(networks)


def check_supported(prompt: str) -> None:
    """Refuse, in one line, A1111 syntax answer-trt does not run: prompt editing
    (``[a:b:0.5]``), alternation (``[a|b]``) and composable prompts (``a AND b``). A ``:`` or
    ``|`` counts only where it stands directly inside an unescaped ``[ ]``."""
    stack: list[str] = []
    index = 0
    while index < len(prompt):
        char = prompt[index]
        if char == "\\":
            index += 2
            continue
        if char in "([":
            stack.append(char)
        elif char in ")]" and stack:
            stack.pop()
        elif char in ":|" and stack and stack[-1] == "[":
            start = prompt.rfind("[", 0, index)
            end = prompt.find("]", index)
            shown = prompt[start:end + 1 if end >= 0 else len(prompt)]
            what = "alternation ([a|b])" if char == "|" else "prompt editing ([from:to:when])"
            raise UserInputError(f"{shown!r}: A1111's {what} is not supported by answer-trt; write the prompt without "
                                 "it (escape a literal bracket as \\[ \\])")
        index += 1
    if _AND.search(prompt):
        raise UserInputError("'AND': A1111's composable prompts are not supported by answer-trt; write one prompt "
                             "(or 'and' in lower case)")


def parse_attention(text: str) -> list[Fragment]:
    """The weighted fragments of ``text`` (A1111's emphasis; see the module docstring), with
    ``BREAK`` marks; ``[Fragment("")]`` for an empty text."""
    pieces: list[Fragment] = []
    round_open: list[int] = []  # where each open bracket's span starts in ``pieces``
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for i in range(start, len(pieces)):
            if not pieces[i].is_break:
                pieces[i] = Fragment(pieces[i].text, pieces[i].weight * factor)

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append(Fragment(token[1:]))
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # e.g. "1.2.3": A1111 fails here; say what to write
                raise UserInputError(f"{token!r}: the emphasis weight {weight!r} is not a number: write "
                                     "(text:1.2)") from None
            multiply(round_open.pop(), factor)
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    pieces.append(BREAK)
                pieces.append(Fragment(part))
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    return _merged(pieces) or [Fragment("")]


def _merged(pieces: list[Fragment]) -> list[Fragment]:
    """Neighbours of equal weight joined (A1111's last pass); BREAKs stay apart."""
    merged: list[Fragment] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if last is not None and not last.is_break and not piece.is_break and last.weight == piece.weight:
            merged[-1] = Fragment(last.text + piece.text, last.weight)
        else:
            merged.append(piece)
    return merged


def parse_prompt(prompt: str) -> ParsedPrompt:
    """``prompt`` in A1111's syntax: extra networks taken out, unsupported syntax refused
    (``check_supported``, ``UserInputError``), emphasis parsed."""
    text, networks = extract_extra_networks(prompt)
    check_supported(text)
    return ParsedPrompt(tuple(parse_attention(text)), networks)

"""Stylometrics of a text: measures of how it is written, independent of what it says.

- sentence length in words (mean and standard deviation);
- dialogue share: the share of words inside quotation marks (straight or curly double
  quotes, and curly single quotes as British printing uses them);
- words per paragraph (paragraphs are separated by a blank line);
- type-token ratio as the moving-average type-token ratio over windows of
  :data:`MATTR_WINDOW` words (Covington and McFall, "Cutting the Gordian knot: the
  moving-average type-token ratio", 2010), which unlike the plain ratio does not fall as a
  text grows;
- the function-word profile: the relative frequency of each of the 70 function words of
  Mosteller and Wallace ("Inference and Disputed Authorship: The Federalist", 1964), the
  classic markers of an author's hand.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

#: The function words of Mosteller and Wallace (1964), in their order.
FUNCTION_WORDS: tuple[str, ...] = (
    "a", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by",
    "can", "do", "down", "even", "every", "for", "from", "had", "has", "have", "her", "his",
    "if", "in", "into", "is", "it", "its", "may", "more", "must", "my", "no", "not", "now",
    "of", "on", "one", "only", "or", "our", "shall", "should", "so", "some", "such", "than",
    "that", "the", "their", "then", "there", "things", "this", "to", "up", "upon", "was",
    "were", "what", "when", "which", "who", "will", "with", "would", "your",
)

#: Words per window of the moving-average type-token ratio (Covington and McFall use 500;
#: shorter texts use their whole length).
MATTR_WINDOW = 500

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]*\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”|‘.*?’(?![A-Za-z])", re.DOTALL)


@dataclass(frozen=True)
class Stylometrics:
    """The measures of one text (units in the field names: words, shares in [0, 1])."""

    words: int
    sentence_words_mean: float
    sentence_words_std: float
    dialogue_share: float
    paragraph_words_mean: float
    type_token_ratio: float
    function_words: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        """The measures by name, the function-word profile as ``{word: frequency}``."""
        return {
            "words": self.words, "sentence_words_mean": round(self.sentence_words_mean, 2),
            "sentence_words_std": round(self.sentence_words_std, 2),
            "dialogue_share": round(self.dialogue_share, 4),
            "paragraph_words_mean": round(self.paragraph_words_mean, 2),
            "type_token_ratio": round(self.type_token_ratio, 4),
            "function_words": {w: round(f, 5) for w, f in zip(FUNCTION_WORDS,
                                                               self.function_words,
                                                               strict=True)},
        }


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (letters and inner apostrophes)."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def _mean_std(values: list[int]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def mattr(tokens: list[str], window: int = MATTR_WINDOW) -> float:
    """The moving-average type-token ratio of ``tokens`` (0 when empty)."""
    if not tokens:
        return 0.0
    if len(tokens) <= window:
        return len(set(tokens)) / len(tokens)
    counts = Counter(tokens[:window])
    total = len(counts)
    for i in range(window, len(tokens)):
        counts[tokens[i]] += 1
        old = tokens[i - window]
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        total += len(counts)
    return total / ((len(tokens) - window + 1) * window)


def measure(text: str) -> Stylometrics:
    """The stylometrics of ``text``."""
    tokens = words(text)
    sentences = [n for n in (len(words(s)) for s in _SENTENCE_END.split(text)) if n]
    paragraphs = [n for n in (len(words(p)) for p in _PARAGRAPH.split(text)) if n]
    quoted = sum(len(words(q)) for q in _QUOTED.findall(text))
    counts = Counter(tokens)
    total = len(tokens) or 1
    sentence_mean, sentence_std = _mean_std(sentences)
    paragraph_mean, _ = _mean_std(paragraphs)
    return Stylometrics(
        words=len(tokens), sentence_words_mean=sentence_mean, sentence_words_std=sentence_std,
        dialogue_share=min(1.0, quoted / total), paragraph_words_mean=paragraph_mean,
        type_token_ratio=mattr(tokens),
        function_words=tuple(counts[w] / total for w in FUNCTION_WORDS))


def cosine(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0

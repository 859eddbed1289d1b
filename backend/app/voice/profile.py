"""The author's voice profile: built from the archive passages tagged as the author's own
writing (``voice``), as the style generator's persona card was (an embedding centroid plus
exemplar passages), with the stylometrics of :mod:`app.voice.stylometrics` beside it.

- **centroid**: the mean of the passages' unit-length embeddings, scaled to unit length;
  the style similarity of a text is the cosine between its mean passage embedding and it.
- **stylometrics**: measured over the passages' text joined in file order.
- **comparison** of a text: its style similarity, the cosine between its function-word
  profile and the profile's, and for each measure the text's value beside the profile's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.voice.stylometrics import FUNCTION_WORDS, Stylometrics, cosine, measure

#: Embeds texts to unit-length rows of shape ``(len(texts), dimension)``.
Embed = Callable[[Sequence[str]], np.ndarray]

#: The stylometric measures compared one by one (the function words are compared as a whole).
MEASURES = ("sentence_words_mean", "sentence_words_std", "dialogue_share",
            "paragraph_words_mean", "type_token_ratio")

#: Words per passage embedded for a comparison: all-MiniLM-L6-v2 reads at most 256 word
#: pieces, about 190 English words; 150 keeps a passage whole.
PASSAGE_WORDS = 150


def passages(text: str, size: int = PASSAGE_WORDS) -> list[str]:
    """``text`` cut into passages of about ``size`` words (whitespace-separated)."""
    tokens = text.split()
    return [" ".join(tokens[i:i + size]) for i in range(0, len(tokens), size)]


def mean_direction(embeddings: np.ndarray) -> np.ndarray:
    """The unit-length mean of ``embeddings`` (shape ``(n, dimension)``)."""
    mean = embeddings.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm else mean


@dataclass(frozen=True)
class VoiceProfile:
    """A voice: the files it was built from, its passages' count, centroid (unit length,
    shape ``(dimension,)``) and stylometrics."""

    files: tuple[str, ...]
    passages: int
    centroid: np.ndarray
    stylometrics: Stylometrics

    @classmethod
    def build(cls, files: Sequence[str], texts: Sequence[str],
              embeddings: np.ndarray) -> VoiceProfile:
        """The profile of passages ``texts`` (in file order) with their ``embeddings``
        (unit-length rows, one per text)."""
        if not texts:
            raise ValueError("a voice profile needs at least one passage")
        return cls(tuple(files), len(texts), mean_direction(embeddings),
                   measure("\n\n".join(texts)))

    def similarity(self, embeddings: np.ndarray) -> float:
        """The style similarity of a text whose passages have ``embeddings``: the cosine
        between their mean direction and the centroid (-1 to 1)."""
        return float(mean_direction(embeddings) @ self.centroid)

    def compare(self, text: str, embed: Embed) -> dict[str, object]:
        """How ``text`` compares with this voice: ``style_similarity`` (embedding cosine),
        ``function_word_similarity`` (cosine of the function-word profiles) and per measure
        ``{"text": ..., "profile": ...}``."""
        mine = measure(text)
        return {
            "style_similarity": round(self.similarity(embed(passages(text))), 4),
            "function_word_similarity": round(cosine(mine.function_words,
                                                     self.stylometrics.function_words), 4),
            "measures": {name: {"text": round(float(getattr(mine, name)), 4),
                                "profile": round(float(getattr(self.stylometrics, name)), 4)}
                         for name in MEASURES},
            "words": mine.words,
        }

    def summary(self) -> dict[str, object]:
        """The profile as clients see it (no embedding values: only its dimension)."""
        return {"files": list(self.files), "passages": self.passages,
                "embedding_dimension": int(self.centroid.shape[0]),
                "stylometrics": self.stylometrics.as_dict(),
                "function_words": list(FUNCTION_WORDS)}

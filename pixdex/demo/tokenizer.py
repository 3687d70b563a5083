"""A small but real CLIP byte-level BPE tokenizer for the shapes world.

The vocabulary follows OpenAI CLIP's layout: the 256 byte-level characters, the same 256
with the end-of-word marker ``</w>``, one token per merge, then ``<|startoftext|>`` and
``<|endoftext|>``. Because every byte (and every byte at the end of a word) is a token, any
text tokenizes; unknown words simply fall back to smaller pieces. The merges are built so
that every word of the shapes-world caption vocabulary and of common prompts ("a photo of
...", "this is ...") is a single token.

`build_tokenizer()` returns a ``transformers.CLIPTokenizer``; `write_tokenizer_files(dir)`
writes ``vocab.json`` and ``merges.txt`` (loadable by ``CLIPTokenizer.from_pretrained``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from pixdex.demo import world

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"

# Words made whole tokens besides the shapes-world labels (prompt words, near-synonyms, plurals).
PROMPT_WORDS: list[str] = """
a an the this that these those is are was it its there here of on in at with and or to
photo photos picture pictures image images drawing illustration rendering render scene view close up
shape shapes object objects thing things something item items figure icon symbol sign
one two three single pair some only another other both each
small medium large big tiny little huge mid sized size
left right top bottom center centre middle side corner upper lower above below near next beside
colour color coloured colored colors colours
dark light bright pale deep grey gray white black brown magenta violet teal turquoise lime gold
background foreground plain gradient noise noisy stripes striped texture textured
circle circles round disc disk dot ring oval square squares box rectangle diamond
triangle triangles star stars hexagon hexagons polygon cross crosses plus x
red orange yellow green cyan blue purple pink
showing shows contains containing featuring has have of
my your our good nice cool simple flat solid
""".split()


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte to printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def vocabulary_words() -> list[str]:
    """Every word that is a single token, in the order their merges are added."""
    words: list[str] = []
    labels = world.COLORS + world.SHAPES + world.SIZES + world.POSITIONS + [
        w for phrase in world.POSITION_PHRASE.values() for w in phrase.split()
    ]
    for w in labels + PROMPT_WORDS:
        w = w.lower()
        if w not in words:
            words.append(w)
    return words


def _word_symbols(word: str) -> list[str]:
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    chars[-1] = chars[-1] + EOW
    return chars


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Reference BPE: repeatedly merge the adjacent pair of lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        best = None
        for i in range(len(symbols) - 1):
            r = ranks.get((symbols[i], symbols[i + 1]))
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_vocab_and_merges(
    words: Iterable[str] | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-layout vocabulary and the merges that make each of `words` one token."""
    words = list(words) if words is not None else vocabulary_words()
    table = bytes_to_unicode()
    base = list(table.values())
    vocab_list = base + [c + EOW for c in base]
    known = set(vocab_list)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        for _ in range(64):
            pieces = _apply_bpe(_word_symbols(word), ranks)
            if len(pieces) == 1:
                break
            # Join the current pieces left to right with fresh (lowest-priority) merges.
            acc = pieces[0]
            for nxt in pieces[1:]:
                pair = (acc, nxt)
                if pair not in ranks:
                    ranks[pair] = len(merges)
                    merges.append(pair)
                acc = acc + nxt
                if acc not in known:
                    known.add(acc)
                    vocab_list.append(acc)
        else:  # pragma: no cover - the construction always converges
            raise RuntimeError(f"could not make {word!r} a single token")
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def write_tokenizer_files(out_dir: str | Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    vocab_path = out / "vocab.json"
    merges_path = out / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return vocab_path, merges_path


def build_tokenizer(model_max_length: int = 32):
    """A ``transformers.CLIPTokenizer`` over the shapes-world vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


__all__ = ["BOS", "EOS", "PROMPT_WORDS", "build_tokenizer", "build_vocab_and_merges", "vocabulary_words",
           "write_tokenizer_files"]

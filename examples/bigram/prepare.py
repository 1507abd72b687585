"""Turn a word list into the bigram index files that bigram.ad loads.

    python prepare.py names.txt        # makemore's list of names

Each word becomes the bigrams of `.word.`: (".", "e"), ("e", "m"), …, ("a", ".").
The characters are numbered as in makemore: "." is 0, then the letters of the
data in sorted order (a–z give 1–26). Writes, next to this script unless
--out says otherwise:

    xs.txt     the first character of each bigram, one index a line
    ys.txt     the second character of each bigram
    vocab.txt  the characters, the line number (from 0) being the index

Only the standard library and numpy are used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

BOUNDARY = "."
# A first line that is one of these is a column title, not a word.
HEADER_WORDS = {"name", "names", "word", "words"}


def read_words(path: Path, limit: int | None = None) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    words = [line for line in lines if line]
    if words and words[0].lower() in HEADER_WORDS:
        print(f"prepare: skipping the header line {words[0]!r}", file=sys.stderr)
        words = words[1:]
    return words[:limit]


def bigrams(words: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    vocab = [BOUNDARY] + sorted(set("".join(words)) - {BOUNDARY})
    index = {ch: i for i, ch in enumerate(vocab)}
    xs, ys = [], []
    for word in words:
        chars = [BOUNDARY, *word, BOUNDARY]
        for a, b in zip(chars, chars[1:]):
            xs.append(index[a])
            ys.append(index[b])
    return np.array(xs, dtype=np.int64), np.array(ys, dtype=np.int64), vocab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", type=Path, help="a text file, one word per line (e.g. makemore's names.txt)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="the folder to write xs.txt, ys.txt and vocab.txt to (default: next to this script)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N words")
    args = parser.parse_args(argv)

    words = read_words(args.words, args.limit)
    xs, ys, vocab = bigrams(words)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savetxt(args.out / "xs.txt", xs, fmt="%d")
    np.savetxt(args.out / "ys.txt", ys, fmt="%d")
    (args.out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    print(f"prepare: {len(words)} words, {len(xs)} bigrams, {len(vocab)} characters -> {args.out}")
    if len(vocab) != 27:
        print(f"prepare: note: bigram.ad assumes 27 characters; set its `chars` to {len(vocab)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

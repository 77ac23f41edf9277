"""Per-connection zstd with the dictionary shipped in the package.

A connection asks for compression in its HELLO: the ``seq`` header field of HELLO
carries capability bits and :data:`CAP_ZSTD` asks for zstd with the shipped dictionary
(docs/protocol.md, "Compression negotiation"). The one mechanism serves both binary
transports (WebSocket ``bluewren.v1`` and raw TCP); the WELCOME answer says
``"compression": "zstd-dict"`` when the node agreed, ``null`` otherwise (always on
``bluewren.json.v1``, whose text messages cannot carry compressed bodies).

On such a connection the node compresses a DELIVER body (the envelope) of at least
:data:`COMPRESS_MIN_BYTES` once per fan-out and marks the frame ``COMPRESSED|DICT``.
Every connection, negotiated or not, may send SEND bodies flagged ``COMPRESSED`` or
``COMPRESSED|DICT``; the node decompresses them within ``max_message_bytes``.

The dictionary (``bluewren/data/chat.dict``) is trained by this module run as a script
on a generated corpus of chat-like bodies::

    python tools/train_dictionary.py [--out python/bluewren/data/chat.dict]

The corpus is seeded, so a retrain gives the same samples.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Final

from bluewren import Compressor, Decompressor, train_dictionary
from bluewren.node.commands import encode_envelope

__all__ = [
    "CAP_ZSTD",
    "COMPRESSION_NAME",
    "COMPRESS_MIN_BYTES",
    "DICTIONARY_MAX_BYTES",
    "DictCodec",
    "chat_corpus",
    "load_dictionary",
]

CAP_ZSTD: Final = 0x1
"""HELLO capability bit (in the ``seq`` header field): zstd with the shipped dictionary."""

COMPRESSION_NAME: Final = "zstd-dict"
"""The WELCOME ``compression`` value of a connection that negotiated :data:`CAP_ZSTD`."""

COMPRESS_MIN_BYTES: Final = 96
"""DELIVER bodies shorter than this leave uncompressed (the frame header costs 32)."""

DICTIONARY_MAX_BYTES: Final = 16 * 1024
"""Size bound of the trained dictionary."""

LEVEL: Final = 3
"""zstd level of outgoing bodies: fast, and the dictionary does most of the work."""


@cache
def load_dictionary() -> bytes:
    """The dictionary shipped in the package (``bluewren/data/chat.dict``)."""
    return resources.files("bluewren").joinpath("data/chat.dict").read_bytes()


class DictCodec:
    """The node's compressor and bounded decompressors (shared by all connections)."""

    def __init__(self, max_output: int) -> None:
        dictionary = load_dictionary()
        self.compressor: Final = Compressor(LEVEL, dictionary)
        self.dict_decompressor: Final = Decompressor(dictionary, max_output=max_output)
        self.plain_decompressor: Final = Decompressor(max_output=max_output)

    def compress(self, body: bytes) -> bytes | None:
        """``body`` compressed with the dictionary, or None if that would not pay."""
        if len(body) < COMPRESS_MIN_BYTES:
            return None
        packed = self.compressor.compress(body)
        return packed if len(packed) < len(body) else None


# -- the training corpus -----------------------------------------------------------------

_USERS: Final = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
]
_EXTENSIONS: Final = ["pdf", "png", "docx", "zip"]
_DEVICES: Final = ["phone", "desktop", "web", "tablet", "d1", "d2", "ios", "android"]
_WORDS: Final = [
    "the",
    "a",
    "to",
    "and",
    "you",
    "I",
    "it",
    "is",
    "that",
    "for",
    "on",
    "in",
    "this",
    "we",
    "of",
    "be",
    "have",
    "are",
    "will",
    "can",
    "just",
    "meeting",
    "today",
    "tomorrow",
    "please",
    "thanks",
    "thank",
    "ok",
    "okay",
    "yes",
    "no",
    "sure",
    "sounds",
    "good",
    "let",
    "me",
    "know",
    "when",
    "lunch",
    "call",
    "at",
    "pm",
    "am",
    "deploy",
    "release",
    "build",
    "failed",
    "passed",
    "review",
    "PR",
    "merge",
    "branch",
    "ticket",
    "customer",
    "issue",
    "fixed",
    "bug",
    "prod",
    "staging",
    "server",
    "down",
    "up",
    "looks",
    "great",
    "nice",
    "see",
    "update",
    "document",
    "doc",
    "link",
    "sent",
    "shared",
    "file",
    "morning",
    "afternoon",
    "evening",
    "week",
    "weekend",
    "team",
    "sync",
    "standup",
    "minutes",
    "agenda",
    "slides",
    "question",
    "answer",
    "hey",
    "hi",
    "hello",
    "sorry",
    "late",
    "on",
    "my",
    "way",
    "back",
    "later",
    "done",
    "working",
    "on",
    "it",
    "ETA",
    "checking",
    "now",
    "could",
    "you",
    "would",
    "should",
    "think",
    "maybe",
    "probably",
]
_EMOJI: Final = ["👍", "🎉", "😂", "🙏", "✅", "🔥", "👀", "❤️", ":)", ":D"]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 18))]
    text = " ".join(words).capitalize() + rng.choice([".", "!", "?", "", "..."])
    if rng.random() < 0.2:
        text += " " + rng.choice(_EMOJI)
    return text


def _body(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.45:
        return " ".join(_sentence(rng) for _ in range(rng.randint(1, 4))).encode()
    obj: dict[str, object]
    if r < 0.8:
        obj = {"type": "text", "text": _sentence(rng)}
        if rng.random() < 0.3:
            obj["mentions"] = rng.sample(_USERS, rng.randint(1, 3))
        if rng.random() < 0.3:
            obj["reply_to"] = {"conv": rng.randint(1, 10**6), "seq": rng.randint(1, 10**5)}
        if rng.random() < 0.2:
            obj["format"] = "markdown"
    elif r < 0.9:
        obj = {
            "type": "file",
            "name": f"{rng.choice(_WORDS)}-{rng.randint(1, 999)}.{rng.choice(_EXTENSIONS)}",
            "size": rng.randint(1000, 10**8),
            "mime": rng.choice(["application/pdf", "image/png", "application/zip"]),
            "url": f"https://files.example.com/{rng.getrandbits(64):016x}",
        }
    else:
        obj = {
            "type": "reaction",
            "emoji": rng.choice(_EMOJI),
            "target": {"conv": rng.randint(1, 10**6), "seq": rng.randint(1, 10**5)},
        }
    obj["client_ts"] = 1_700_000_000_000 + rng.randint(0, 10**11)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def chat_corpus(n: int = 20_000, seed: int = 1) -> list[bytes]:
    """``n`` chat-like samples: bare bodies and DELIVER envelopes around them."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for _ in range(n):
        body = _body(rng)
        if rng.random() < 0.5:
            body = encode_envelope(rng.choice(_USERS), rng.choice(_DEVICES), body)
        out.append(body)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Trains the dictionary and reports the ratio it reaches on a held-out corpus."""
    default = Path(__file__).resolve().parent.parent / "data" / "chat.dict"
    parser = argparse.ArgumentParser(description="train the shipped zstd dictionary")
    parser.add_argument("--out", type=Path, default=default)
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args(argv)
    dictionary = train_dictionary(chat_corpus(args.samples), DICTIONARY_MAX_BYTES)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(dictionary)
    held_out = chat_corpus(2000, seed=2)
    raw = sum(len(b) for b in held_out)
    plain = Compressor(LEVEL)
    with_dict = Compressor(LEVEL, dictionary)
    p = sum(min(len(plain.compress(b)), len(b)) for b in held_out)
    d = sum(min(len(with_dict.compress(b)), len(b)) for b in held_out)
    print(
        f"wrote {args.out} ({len(dictionary)} bytes); held-out corpus {raw} bytes: "
        f"zstd {p / raw:.2f}, zstd+dict {d / raw:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The bundle's tokenizer.json through the `tokenizers` library (no transformers): encode without special tokens,
decode skipping them, no padding or truncation -- the conventions the training side uses (`add_special_tokens=False`,
`decode(..., skip_special_tokens=True)`), so prompt ids and parsed keywords match. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..core.errors import BundleError, UserError


class Codec:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            self.tk = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception for unreadable files
            raise BundleError(f"cannot read tokenizer {path}: {exc}", "re-export the bundle") from exc
        # A BERT post-processor would wrap every text in [CLS] ... [SEP]; prompts place special tokens themselves.
        self.tk.post_processor = None
        # MiniLM's tokenizer.json pads and truncates to 128 tokens: prompts are padded by the runtime, never cut here.
        self.tk.no_padding()
        self.tk.no_truncation()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(require_utf8(text), add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def __len__(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)


def require_utf8(text: str, what: str = "text") -> str:
    """`text` if it is valid Unicode; a UserError naming the first bad byte otherwise. Bytes that are not UTF-8 reach
    Python as lone surrogates (command-line arguments are decoded with surrogateescape), which tokenizers rejects
    with a bare TypeError."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        ch = ord(text[exc.start])
        bad = f"byte 0x{ch - 0xDC00:02x}" if 0xDC80 <= ch <= 0xDCFF else f"code point U+{ch:04X}"
        raise UserError(f"{what} is not valid UTF-8 ({bad} at character {exc.start + 1})",
                        "pass UTF-8 text (convert it with iconv)") from None
    return text

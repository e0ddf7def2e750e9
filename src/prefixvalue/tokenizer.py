"""Character-level tokenizer used by the embedded default policy and by the test fixtures.

It is a real `PreTrainedTokenizerFast` (Rust `tokenizers` backend), so it saves with
`save_pretrained` and loads back with `AutoTokenizer.from_pretrained` like any hub tokenizer.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
#: printable ASCII (letters, digits, punctuation, space) and newline
DEFAULT_CHARS: str = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer(chars: str = DEFAULT_CHARS) -> PreTrainedTokenizerFast:
    """Return a tokenizer with one token per character of `chars` plus <pad>, <eos>, <unk>.

    Ids: <pad>=0, <eos>=1, <unk>=2, then the characters in the order given. Decoding joins
    tokens without separators, so ``decode(encode(s)) == s`` for any string over `chars`.
    """
    seen: dict[str, int] = {PAD: 0, EOS: 1, UNK: 2}
    for ch in chars:
        if ch not in seen:
            seen[ch] = len(seen)
    backend = Tokenizer(models.WordLevel(vocab=seen, unk_token=UNK))
    # every character is its own pre-token; [\s\S] also matches newlines
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        padding_side="left",  # generation pads on the left; saved with the tokenizer
    )
    return tok

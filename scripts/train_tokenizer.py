"""CLI: train the project's byte-level BPE tokenizer and save it as a transformers tokenizer folder.

With no --input it trains on the synthetic task's corpus plus a small English sample; this is how the shipped
processing/tokenizer/ is built: python scripts/train_tokenizer.py --output processing/tokenizer --vocab-size 1024
"""

import argparse
import logging
from collections.abc import Iterator, Sequence

from processing.tokenizer_corpus import default_training_texts
from processing.tokenizers import DEFAULT_VOCAB_SIZE, save_tokenizer, train_bpe_tokenizer


def _read_lines(paths: Sequence[str]) -> Iterator[str]:
    # Line by line so large corpora are streamed into the trainer rather than loaded whole.
    for path in paths:
        with open(path, encoding="utf-8") as f:
            yield from f


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder to write tokenizer.json + tokenizer_config.json to")
    parser.add_argument("--input", nargs="+", default=None, help="UTF-8 text files (default: synthetic corpus)")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    texts = _read_lines(args.input) if args.input else default_training_texts()
    tokenizer = train_bpe_tokenizer(texts, vocab_size=args.vocab_size)
    out = save_tokenizer(tokenizer, args.output)
    logging.getLogger("train_tokenizer").info("saved %d-token tokenizer to %s", len(tokenizer), out)


if __name__ == "__main__":
    main()

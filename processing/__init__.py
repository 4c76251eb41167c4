"""Data processing for minimind-v: synthetic task, tokenizer, image processing and chat formatting."""

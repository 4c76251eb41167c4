"""minimind-v's project library (everything that does not travel to the Hub): processors, tokenizer, data rows ->
batches, the synthetic task, training, evaluation, checkpoint conversion and the demo. Import the submodule you
need; this package imports nothing by itself, so every command line starts without loading what it does not use."""

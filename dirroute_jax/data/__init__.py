"""Data: tokenizers, text sources, token packing and the grain input pipeline.

Entry point: `dirroute_jax.data.pipeline.make_data(cfg)`. Modules:
  tokenizers.py  bytes / exact GPT-2 BPE (offline) / corpus-trained byte-level BPE
  corpus.py      the embedded code / prose / docs corpus, written once through a TFDS builder
  sources.py     embedded | tfds | files sources as documents with split and domain labels
  packing.py     tokenize once into cached token streams; train and eval windows
  pipeline.py    grain MapDatasets: batches as a pure function of (seed, step), host sharding
"""

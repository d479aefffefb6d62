"""The embedded demo's builder: a real-text mini-pile with planted facts and a mini-Pythia trained on it.

Its ingredients (corpus sources, planted facts, tokenizer, trainer, config) and the readers of a built demo live in
``evaluation``, which retrains and reads it; only the CLI and tests import this package.
"""

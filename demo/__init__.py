"""The embedded demo: a real-text mini-pile with planted facts and a mini-Pythia trained on it."""

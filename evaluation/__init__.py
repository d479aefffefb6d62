"""Evaluations that prove attributions right: fact tracing, LDS, tail-patch, the unlearning ablation report.

Also what the cases they run on are made of and read with: the demo's config, corpus sources, planted facts,
tokenizer and trainer, and the readers of a built demo (``demo`` assembles them into the build).
"""

"""Evaluations that prove attributions right: fact tracing, LDS, tail-patch, the unlearning ablation report."""

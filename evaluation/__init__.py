"""Evaluations that prove attributions right: fact tracing, LDS, tail-patch (EVALUATION.md)."""

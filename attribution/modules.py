"""Which layers get sketched: every ``nn.Linear`` inside the transformer blocks (optionally the head)."""

from __future__ import annotations

from torch import nn

from attribution.errors import ConfigError


class NoLinearModulesError(ConfigError):
    """The model has no ``nn.Linear`` layers inside a block list to sketch."""


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks: its largest ``nn.ModuleList``."""
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)]
    if not lists:
        raise NoLinearModulesError(f"{type(model).__name__} has no nn.ModuleList of transformer blocks to sketch")
    return max(lists, key=lambda item: len(item[1]))


def sketched_linears(model: nn.Module, include_head: bool = False) -> dict[str, nn.Linear]:
    """Named ``nn.Linear`` modules of every block, in model order, plus the output head if asked."""
    prefix, _ = block_list(model)
    found = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name.startswith(prefix + ".")
    }
    if include_head:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(head, nn.Linear):
            raise NoLinearModulesError(f"{type(model).__name__} has no nn.Linear output head to sketch")
        found.update({name: mod for name, mod in model.named_modules() if mod is head})
    if not found:
        raise NoLinearModulesError(
            f"{type(model).__name__} has no nn.Linear layers inside its blocks ({prefix}); "
            "gradient sketches need linear layers (Conv1D-style GPT-2 layers are not supported yet)"
        )
    return found

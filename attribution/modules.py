"""Which layers get sketched, by parameter group: the ``nn.Linear`` layers inside the transformer blocks
(``blocks``), the input embedding (``embed``) and the output head (``head``)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from attribution.errors import ConfigError
from attribution.kinds import ModuleGroup


class NoLinearModulesError(ConfigError):
    """The model has no ``nn.Linear`` layers inside a block list to sketch."""


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks: its largest ``nn.ModuleList``."""
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)]
    if not lists:
        raise NoLinearModulesError(f"{type(model).__name__} has no nn.ModuleList of transformer blocks to sketch")
    return max(lists, key=lambda item: len(item[1]))





def sketched_modules(model: nn.Module, groups: Iterable[ModuleGroup | str]) -> dict[str, nn.Module]:
    """The modules of the given groups, in model order: ``nn.Linear`` layers, and the ``nn.Embedding`` for
    ``embed``."""
    groups = {ModuleGroup(g) for g in groups}
    found: dict[str, nn.Module] = {}
    if ModuleGroup.BLOCKS in groups:
        found.update(sketched_linears(model))
    if ModuleGroup.EMBED in groups:
        embed = model.get_input_embeddings()
        if not isinstance(embed, nn.Embedding):
            raise NoLinearModulesError(f"{type(model).__name__} has no nn.Embedding input embedding to sketch")
        found.update({name: mod for name, mod in model.named_modules() if mod is embed})
    if ModuleGroup.HEAD in groups:
        found.update({name: mod for name, mod in model.named_modules() if mod is output_head(model)})
    order = [name for name, _ in model.named_modules()]
    return dict(sorted(found.items(), key=lambda item: order.index(item[0])))


def output_head(model: nn.Module) -> nn.Linear:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise NoLinearModulesError(f"{type(model).__name__} has no nn.Linear output head to sketch")
    return head


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """``(out, in)`` sides of a sketched module's weight: a Linear's ``(out_features, in_features)``; an
    embedding's ``(vocabulary, width)`` (its gradient is Σ_t onehot(token_t) ⊗ g_t)."""
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return module.out_features, module.in_features


def sketched_linears(model: nn.Module, include_head: bool = False) -> dict[str, nn.Linear]:
    """Named ``nn.Linear`` modules of every block, in model order, plus the output head if asked."""
    prefix, _ = block_list(model)
    found = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name.startswith(prefix + ".")
    }
    if include_head:
        head = output_head(model)
        found.update({name: mod for name, mod in model.named_modules() if mod is head})
    if not found:
        raise NoLinearModulesError(
            f"{type(model).__name__} has no nn.Linear layers inside its blocks ({prefix}); "
            "gradient sketches need linear layers (Conv1D-style GPT-2 layers are not supported yet)"
        )
    return found

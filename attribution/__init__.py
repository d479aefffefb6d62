"""The attribution core: model loading, gradient sketches, retrievers, ablations."""

"""The attribution core: model loading, gradient sketches, curvature, vector stores, retrievers, unlearning ascent."""

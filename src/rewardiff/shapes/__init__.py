"""The embedded shapes world: renderer, prompt language, oracle and tiny models (see SHAPES.md)."""

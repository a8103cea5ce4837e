"""Engines behind one interface: ``run(dict of named tensors) -> dict of named tensors``."""

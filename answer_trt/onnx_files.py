"""Which files an ONNX graph makes ONNX Runtime read: the graph itself and every
external-data location named by any tensor in it (initializers, sparse initializers and
tensor attributes, in subgraphs too). The manifest checks derive the checksum list from
this, so no file a load reads can escape its checksum.

Reads only the graph's protobuf (``onnx.load(..., load_external_data=False)``); imports
``onnx`` when called, so importing the runtime stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors(sub)


def external_data_locations(graph_file: Path) -> list[str]:
    """The external-data locations (as written in the graph, relative to its folder) of
    every tensor of ``graph_file``, each once, in first-seen order. Raises ``ValueError``
    when the file is not an ONNX graph."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(graph_file), load_external_data=False)
    except (DecodeError, OSError) as exc:
        raise ValueError(f"{graph_file.name} is not a readable ONNX graph ({exc})") from None
    locations: dict[str, None] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            locations.setdefault(entry.get("location", ""), None)
    return list(locations)

"""Graph plumbing shared by cut enumeration and extraction: node inputs (explicit and the
outer-scope names used inside If/Loop/Scan bodies) and a stable topological order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeinfer.errors import BundleError

if TYPE_CHECKING:
    import onnx

__all__ = ["node_inputs", "topological_nodes"]


def _subgraph_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scope."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(node_inputs(node))
        defined.update(o for o in node.output if o)
    return used - defined


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads, including outer-scope names used by its subgraphs."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for sub in subgraphs:
            names.extend(sorted(_subgraph_refs(sub)))
    return names


def topological_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in a topological order: the file's own order when it is one (ONNX requires
    it, and exporters emit branches one after the other, which keeps crossing sets small);
    otherwise a stable Kahn sort that stays as close to the file's order as it can."""
    nodes = list(graph.node)
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    available |= {t.values.name for t in graph.sparse_initializer}
    ok = True
    for node in nodes:
        if any(i not in available for i in node_inputs(node)):
            ok = False
            break
        available.update(o for o in node.output if o)
    if ok:
        return nodes
    import heapq

    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps: list[set[int]] = []
    users: list[list[int]] = [[] for _ in nodes]
    for k, node in enumerate(nodes):
        d = {producer[i] for i in node_inputs(node) if i in producer}
        d.discard(k)
        deps.append(d)
        for j in d:
            users[j].append(k)
    ready = [k for k, d in enumerate(deps) if not d]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            deps[u].discard(k)
            if not deps[u]:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise BundleError("the ONNX graph has a cycle or reads tensors nothing produces")
    return [nodes[k] for k in order]

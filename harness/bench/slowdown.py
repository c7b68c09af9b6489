"""A graph made slower without changing what it computes, to test regression gates on a real
slowdown (more compute in the graph, not a sleep): `segvae ab`'s tests and scripts/ab_error_rates.py."""
from __future__ import annotations

from pathlib import Path


def add_zero_chain(src: Path, dst: Path, ops: int) -> None:
    """dst = src with `ops` extra elementwise ops on its first output: out + Relu(-(Sqrt^ops(|out|))).
    The chain is >= 0, so the added term is exactly 0 and the outputs are unchanged; ONNX Runtime
    cannot know that and runs `ops` passes over the output tensor."""
    import onnx
    from onnx import helper

    if ops < 1:
        raise ValueError(f"ops must be a positive integer, got {ops!r}")
    m = onnx.load(str(src))
    g = m.graph
    out = g.output[0].name
    pre = out + "_before_zero_chain"
    for node in g.node:
        node.output[:] = [pre if o == out else o for o in node.output]
    nodes, t = [helper.make_node("Abs", [pre], ["zc_0"])], "zc_0"
    for i in range(ops):
        nodes.append(helper.make_node("Sqrt", [t], [f"zc_{i + 1}"]))
        t = f"zc_{i + 1}"
    nodes += [helper.make_node("Neg", [t], ["zc_neg"]), helper.make_node("Relu", ["zc_neg"], ["zc_zero"]),
              helper.make_node("Add", [pre, "zc_zero"], [out])]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))

"""ONNX Runtime runs the reference model under a wall-clock limit (issue 13)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import TensorProto, helper

from flowc.backend import limits
from flowc.errors import ExecutionError, ImageError
from flowc.runtime.check import ort_session, run_reference


def _endless_loop() -> bytes:
    """y = x + 1 repeated 10**12 times (a Loop with a constant but absurd trip count)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Add", ["v", "one"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond0", "x"], ["y"], body=body)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("trips", TensorProto.INT64, [], [10**12]),
         helper.make_tensor("cond0", TensorProto.BOOL, [], [True])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_hanging_reference_is_stopped_at_the_limit():
    old = limits.current()
    limits.configure(onnx_seconds=0.5)
    try:
        t0 = time.perf_counter()
        with pytest.raises(ExecutionError, match="ran past the 0.5 s limit"):
            run_reference(_endless_loop(), [np.zeros(1, np.float32)])
        assert time.perf_counter() - t0 < 10
    finally:
        limits.configure(onnx_seconds=old.onnx_seconds)


def test_a_model_ort_refuses_is_a_bad_file():
    with pytest.raises(ImageError, match="onnxruntime refuses it"):
        ort_session(b"\x08\x07garbage")

"""emit: write the target model with its new weights, atomically, and validate it.

Rules:
1. Each updated weight replaces its tensor in the target (initializer or Constant node) in the
   tensor's stored layout and dtype; the graph, inputs, outputs, opsets and every other tensor
   stay as they were. A tensor the exporter shared between several weights (equal values
   merged) is split: each further weight gets an initializer of its own.
2. Provenance goes into metadata_props: frontc.version, frontc.pipeline (every option spelled
   out), frontc.source_sha256 and frontc.coverage.
3. The model is written to a temporary folder beside the output (external data past 2 GB),
   checked with onnx.checker and run once in onnxruntime, and only then renamed into place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

import frontc
from frontc import modelio
from frontc.errors import InputError, PipelineError
from frontc.pipeline import Pass, State
from frontc.validate import check_model


def apply_updates(state: State) -> None:
    weights = {w.name: w for w in state.target.index.weights}
    for name, values in state.updates.items():
        weight = weights[name]
        # resize hands over finished tensors (stored layout, target dtype); arrays still work
        tensor = weight.store(values) if isinstance(values, np.ndarray) else values
        if weight.reader is not None:  # shared or placeholder: the weight gets its own initializer
            graph = state.target.model.graph
            node, port = weight.reader
            value = ir.Value(name=name, shape=ir.Shape(tensor.shape),
                             type=ir.TensorType(tensor.dtype), const_value=tensor)
            old = node.inputs[port]
            node.replace_input_with(port, value)
            if isinstance(weight.holder, ir.Node) and not weight.holder.outputs[0].uses():
                shape = weight.holder.inputs[0]
                graph.remove(weight.holder, safe=True)  # the ConstantOfShape left dangling
                old.name = None
                if shape.is_initializer() and not shape.uses():  # and its shape constant
                    graph.initializers.pop(shape.name)
                    if shape in graph.inputs:
                        graph.inputs.remove(shape)
            graph.register_initializer(value)
            if state.target.model.ir_version < 4:  # IR 3 lists every initializer as an input
                graph.inputs.append(value)
        elif isinstance(weight.holder, ir.Value):
            weight.holder.const_value = tensor
        else:
            weight.holder.attributes["value"] = ir.AttrTensor("value", tensor)


def provenance(state: State) -> dict[str, str]:
    return {
        "frontc.version": frontc.__version__,
        "frontc.pipeline": state.pipeline,
        "frontc.source": state.source_path.name,
        "frontc.source_sha256": modelio.sha256(state.source_path),
        "frontc.coverage": json.dumps({"mapped": state.plan.mapped_tensors,
                                       "kept": len(state.plan.kept)}),
    }


@dataclass(frozen=True)
class Emit(Pass):
    name = "emit"
    summary = "write the initialized target atomically, with provenance, and validate it"
    reads = ('plan', 'updates')
    writes = ()

    def run(self, state: State) -> None:
        if state.output_path is None:
            raise PipelineError("emit needs an output path")
        model = state.target.model
        apply_updates(state)
        model.metadata_props.update(provenance(state))
        with modelio.AtomicOutput(state.output_path) as tmp:
            modelio.save(model, tmp)
            if state.validate:
                try:
                    check_model(tmp)
                except PipelineError as err:  # is it frontc's fault, or was the target broken?
                    try:
                        check_model(state.target_path)
                    except PipelineError:
                        raise InputError(f"target {state.target_path} fails the same checks on "
                                         f"its own: {err}") from None
                    raise

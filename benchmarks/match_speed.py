"""Matching speed on deep decoder-only graphs (GPT-2 from transformers configs, legacy exporter).

    python benchmarks/match_speed.py [--layers 24 100]

Prints, per depth: graph nodes, the time to load both models (the floor), and the time of
`canonicalize,match` (load + parameter view + structure + alignment), for a source of L layers
and a target of L/2 layers at a smaller width. Goals (issue 3): 24 layers under 5 s, 100 under 30 s.
"""
import argparse
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def export_gpt2(path: Path, width: int, layers: int) -> int:
    import onnx
    import torch
    import transformers

    torch.manual_seed(layers)
    config = transformers.GPT2Config(n_embd=width, n_layer=layers, n_head=4, vocab_size=256,
                                     n_positions=64)
    model = transformers.GPT2Model(config).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(ids).last_hidden_state

    torch.onnx.export(LastHidden(), (torch.zeros(1, 16, dtype=torch.long),), str(path), dynamo=False,
                      input_names=["ids"], output_names=["y"], opset_version=18)
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, nargs="+", default=[24, 100])
    args = parser.parse_args()
    import onnx_ir as ir

    import frontc

    with tempfile.TemporaryDirectory() as folder:
        for layers in args.layers:
            source, target = Path(folder) / f"s{layers}.onnx", Path(folder) / f"t{layers}.onnx"
            nodes = export_gpt2(source, 64, layers)
            export_gpt2(target, 48, layers // 2)
            start = time.perf_counter()
            ir.load(source), ir.load(target)
            floor = time.perf_counter() - start
            start = time.perf_counter()
            state = frontc.plan(source, target)
            took = time.perf_counter() - start
            print(f"GPT-2 {layers} layers ({nodes} nodes) -> {layers // 2} layers: "
                  f"match {took:.2f} s, load floor {floor:.2f} s, ratio {took / floor:.1f}x, "
                  f"coverage {state.plan.coverage:.3f}, depth groups "
                  f"{sum(1 for m in state.plan.mappings if max(m.depth) > 1)}")


if __name__ == "__main__":
    main()

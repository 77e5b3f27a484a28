"""copy-embeddings: copy embedding tables by slicing instead of DCT-resizing them."""
from dataclasses import dataclass, field

from frontc.pipeline import Pass, State


@dataclass(frozen=True)
class CopyEmbeddings(Pass):
    name = "copy-embeddings"
    summary = "give embedding tables the source's first columns instead of their DCT resize"
    reads = ("plan", "updates")
    writes = ("updates", "report")
    scale: float = field(default=1.0, metadata={"help": "multiply the copied columns by this"})

    def run(self, state: State) -> None:
        for mapping in state.plan.mappings:
            for source, target in zip(mapping.sources, mapping.targets):
                if target.slot != "embedding.table":
                    continue
                rows, columns = target.shape           # rows: the vocabulary, equal on both sides
                values = source.array()[:rows, :columns] * self.scale
                if values.shape != target.shape:        # a wider target keeps the DCT result
                    continue
                state.updates[target.name] = target.store(values)
                state.report[target.name]["transform"] = f"copy-first-columns x{self.scale:g}"

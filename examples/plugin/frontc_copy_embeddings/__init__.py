"""Example frontc plugin package: the copy-embeddings pass of docs/passes.md."""
from frontc_copy_embeddings.copy_embeddings import CopyEmbeddings

__all__ = ["CopyEmbeddings"]

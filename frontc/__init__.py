"""frontc: initialize a model from a larger pretrained one through its DCT learngene (FRONT)."""
__version__ = "0.1.0"

from frontc.api import extract, plan, transfer  # noqa: E402

__all__ = ["__version__", "extract", "plan", "transfer"]

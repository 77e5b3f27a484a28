"""frontc: initialize a model from a larger pretrained one through its DCT learngene (FRONT)."""
__version__ = "0.2.0"

from frontc.api import extract, plan, transfer  # noqa: E402
from frontc.pipeline import Pass, Pipeline, State  # noqa: E402

__all__ = ["__version__", "Pass", "Pipeline", "State", "extract", "plan", "transfer"]

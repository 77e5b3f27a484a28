"""Makes tests/helpers.py (fixtures and helpers) available to tests in every folder."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))

pytest_plugins = ["helpers"]

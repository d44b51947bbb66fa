"""Where the repository's test data lives, for tests and benchmarks alike."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLES = ROOT / "config" / "examples"

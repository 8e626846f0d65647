"""The reference fixtures' weight rule (kept as a test-side name; it lives in partcatseg.fixtures)."""
from partcatseg.fixtures import rule_state_dict, rule_tensor

__all__ = ["rule_state_dict", "rule_tensor"]

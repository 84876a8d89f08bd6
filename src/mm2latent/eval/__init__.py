"""Evaluation protocols (see docs/design.md section 4)."""

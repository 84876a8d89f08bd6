"""Evaluation protocols (see DESIGN.md section 4)."""

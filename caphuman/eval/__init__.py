"""Evaluation: the HumanIPHC-shaped benchmark, methods side by side, metrics, tables and plots.

benchmark (spec + identities) -> methods (one hook per method) -> runner (generation with
resume) -> scoring (identity, CLIP, head metrics, diversity) -> report (CSV, markdown, plots).
"""

"""Tests of caphuman/data/."""

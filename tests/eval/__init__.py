"""Tests of caphuman/eval/."""

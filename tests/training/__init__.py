"""Tests of caphuman/training/."""

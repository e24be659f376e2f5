"""Tests of caphuman/demo/."""

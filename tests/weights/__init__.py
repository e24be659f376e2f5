"""Tests of caphuman/weights/."""

"""Tests of caphuman/faces/."""

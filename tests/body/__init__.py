"""Tests of caphuman/body/."""

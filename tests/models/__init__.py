"""Tests of caphuman/models/."""

"""Tests of caphuman/head/."""

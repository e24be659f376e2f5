"""Tests of caphuman/conditions/."""

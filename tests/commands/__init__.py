"""Tests of caphuman/commands/."""

"""Faces: detection, alignment, crops, parsing masks and face recognisers."""

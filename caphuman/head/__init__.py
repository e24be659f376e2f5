"""The 3D head prior: reconstruction, condition transfer and rendering of the 9-channel hint."""

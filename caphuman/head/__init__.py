"""The 3D head prior: reconstruction, condition transfer and rendering of the 9-channel hint.

The modules here are shared by both backends: the parameters and transfer rules (params.py), the
:class:`~caphuman.head.prior.HeadPrior` interface (prior.py), rotations, the rasteriser, SH
lighting, the 68-landmark projection and the hint. The backends live in sub-packages:
:mod:`caphuman.head.deca` (DECA/FLAME, what the released weights were trained with) and
:mod:`caphuman.head.builtin` (offline, on mediapipe's face mesh).
"""

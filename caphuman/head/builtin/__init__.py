"""The built-in head prior: offline, from mediapipe's face mesh and a morphable face model.

The model's template is a mean face derived here from mediapipe detections on real photos
(cached on first use); its expression fields are built geometrically from the mesh's semantic
regions; fitting uses similarity transforms between point sets. The prior,
:class:`~caphuman.head.builtin.builtin_prior.BuiltinHeadPrior`, puts them together behind the
shared :class:`~caphuman.head.prior.HeadPrior` interface.
"""

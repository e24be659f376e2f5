"""The DECA / FLAME head prior, the backend the released CapHuman weights were trained with.

DECA's coarse encoder regresses FLAME parameters from a face crop; the FLAME layer turns them
into a posed mesh with a UV albedo map. This package holds the encoder, DECA's crop, the FLAME
layer and its landmark embedding, the readers of the user's DECA/FLAME files (which are not part
of this repository), and :class:`~caphuman.head.deca.deca_prior.DecaHeadPrior`, which puts them
together behind the shared :class:`~caphuman.head.prior.HeadPrior` interface.
"""

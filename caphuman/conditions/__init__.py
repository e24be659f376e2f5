"""Conditions shared by sampling and training: text embeddings, identity tokens, the head hint.

Training reads preprocessed records and calls the same functions as the sampler, so the two
can never disagree on how a condition is computed.
"""

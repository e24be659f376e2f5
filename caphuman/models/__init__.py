"""CapHuman's trainable parts (CapFace, identity projections) and the frozen backbone loaders."""

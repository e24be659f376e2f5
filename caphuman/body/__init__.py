"""Body and hand pose maps for the second (OpenPose) ControlNet."""

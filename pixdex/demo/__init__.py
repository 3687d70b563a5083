"""Demo assets: the procedural shapes world and the shapes-clip model trained on it."""

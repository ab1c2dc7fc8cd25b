"""Course tooling for Tutorial 3 (Neural Networks & CNNs): data, notebook building blocks, grading, CLI."""

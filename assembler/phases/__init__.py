"""The pipeline's phases, in the order they run."""

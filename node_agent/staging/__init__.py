"""Resource files: streamed downloads, blob containers, the node download cache, confinement to the task."""

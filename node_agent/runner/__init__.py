"""Running one command line as a process tree: spawn, environment, limits, kill."""

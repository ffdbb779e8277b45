"""The agent daemon: commands in, processes run, state out."""

"""Retention of task directories: durable deadlines, safe removal and the disk-pressure order (guarantee 6)."""

"""Shared trainer functions, referenced from study files as ``trainers.<module>:train``."""

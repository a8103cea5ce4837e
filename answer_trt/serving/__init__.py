"""Serving: the step-level batcher (no serving framework) and its Ray Serve front end."""

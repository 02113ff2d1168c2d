"""Metrics (FaceSim, aesthetic, CLIP consistency), the benchmark protocol, tables and plots."""

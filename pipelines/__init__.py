"""The Dagster code location: the one place that assembles assets, checks, jobs and resources."""

"""SFT and DPO: losses, timestep modulation, loops, checkpoints. Runs without Dagster."""

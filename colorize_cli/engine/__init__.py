"""Runs over paths: discover, plan outputs (name, skip, claim), stream decode -> model -> write, the console
runner, and the same plan and stream on Ray."""

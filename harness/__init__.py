"""The machinery that serves the lesson at the root: runs, devices, checkpoints, reports."""

"""The streaming path: buffer committed changes, flush them in slices, confirm positions.

Also the runner, which opens the parts, recovers from failures and starts each session.
"""

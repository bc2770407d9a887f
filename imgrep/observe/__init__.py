"""Metrics as data and their text exposition. ``io/`` collects them and writes the logs.
"""

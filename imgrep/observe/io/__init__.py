"""Telemetry (the process's metrics), process statistics from /proc, and structured logs.
"""

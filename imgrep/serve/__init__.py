"""Serving HTTP: the webhook and health listeners.
"""

"""The credential providers over their own transports, and the lookup that tries static credentials first.
"""

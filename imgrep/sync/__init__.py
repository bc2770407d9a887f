"""``imgrep sync`` (README "Pre-seeding a mirror"): what the inputs name, the plan, progress and the
closing table, as pure data and functions. ``io/`` runs the copies with the webhook's engine.
"""

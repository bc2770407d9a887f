"""The sync run: copy jobs on the webhook's engine, the pod listing, and the progress display.
"""

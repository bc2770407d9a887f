"""The inventory's file, the cluster's pod listing, and the merge of every replica's view.
"""

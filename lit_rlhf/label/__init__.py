"""Human feedback from people: a local web app for demonstrations and K-wise rankings (``lit-rlhf label``).

A data source beside the instruction world: it writes record files (``export``); no stage knows it exists.
"""

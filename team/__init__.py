"""The team layer: accounts, the access policy, audit, conversations and
feedback in the app database, knowledge-base management, backups, and what
may be exposed.
"""

"""The Milvus store (Milvus Lite embedded, or a cluster by URI): a knowledge
base's rows in collections named from its identity.
"""

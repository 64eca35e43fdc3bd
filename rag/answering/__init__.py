"""Answering a question over retrieved passages: the follow-up rewrite, the fast
screen, the deep read, extractive answers, citations, prompts and the model
profiles (`pipeline.answer` runs them in order).
"""

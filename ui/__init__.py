"""Streamlit drawing helpers and knowledge-base management for the app."""

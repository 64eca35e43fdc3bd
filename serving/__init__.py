"""Starting the LLM server the app talks to (vLLM, OpenAI-compatible API).

`serving.launch` is stdlib-only and runs in any Python; the other modules
(`convert_gguf`, `tiny_gpt_oss`, `scripted_logits`) run inside `.venv-llm`,
the separate virtual environment that holds vLLM.
"""

"""Regenerate docs/operations-handbook.pdf, the sample knowledge base's PDF
(so the sample shows page numbers and page images). Needs reportlab:

    .venv/bin/python tools/make_handbook_pdf.py
"""

from __future__ import annotations

from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer

PAGES = [
    (
        "kbqa operations handbook",
        [
            "This handbook covers running kbqa in production: the language model server on "
            "GPUs, pointing the app at it, and what to check when something goes wrong.",
            "kbqa answers in two stages. A fast screen asks the model, at reasoning effort "
            "low, which retrieved passages help answer the question; the requests run "
            "concurrently, so the screen takes about as long as one request. A deep read then "
            "answers at reasoning effort high from the kept passages only, citing them as [1], "
            "[2]. When no passage survives the screen, kbqa says the knowledge base does not "
            "contain the answer instead of inventing one.",
        ],
    ),
    (
        "Serving gpt-oss-20b on GPUs",
        [
            "The generator is OpenAI's gpt-oss-20b served by vLLM's OpenAI-compatible server. "
            "On a machine with GPUs, make llm-setup installs the CUDA build of vLLM into "
            ".venv-llm and downloads the model once; make llm starts it.",
            "With two GPUs the default is tensor parallelism: vllm serve openai/gpt-oss-20b "
            "--tensor-parallel-size 2 --gpu-memory-utilization 0.90 --max-model-len 32768 "
            "--enable-prefix-caching. Tensor parallelism splits every layer across both GPUs "
            "and gives the lowest latency for one question at a time.",
            "gpt-oss-20b fits on one GPU, so two data-parallel replicas are the alternative "
            "(make llm LLM_ARGS='--parallel dp'): each GPU holds a full copy and serves its "
            "own requests, which gives more throughput when many people ask at once.",
            "Prefix caching matters because every deep-read prompt starts with the same "
            "instructions; the server reuses their computed keys and values across questions.",
        ],
    ),
    (
        "Pointing the app at a server",
        [
            "The app and the rag command read the server address from RAG_LLM_URL (default "
            "http://127.0.0.1:8000/v1) and the served model name from RAG_LLM_MODEL (default "
            "gpt-oss-20b). Any OpenAI-compatible server works, for example a vLLM server on "
            "another machine: export RAG_LLM_URL=http://gpu-box:8000/v1 before make run, and "
            "make run uses it instead of starting its own.",
            "RAG_LLM_CONTEXT_TOKENS should match the server's --max-model-len. The deep read "
            "drops its weakest passages until the prompt fits that budget, and if the server "
            "still refuses a prompt as too long it drops one more and tries again.",
            "Reasoning effort is sent as the request field reasoning_effort. Writing "
            "'Reasoning: low' into a prompt does not set it: vLLM moves the system message "
            "into the developer instructions of the harmony format.",
        ],
    ),
    (
        "Troubleshooting",
        [
            "The app shows a banner saying the LLM server is not reachable: the server is not "
            "running or RAG_LLM_URL points elsewhere. Searches still work, and each question "
            "shows the best passages with their sources instead of an answer.",
            "An answer ends with a note that it was cut off at the token limit: raise "
            "RAG_READ_MAX_TOKENS. gpt-oss spends tokens on reasoning before it answers; when "
            "reasoning uses every token, kbqa retries once at the next lower reasoning effort.",
            "ingest reports a file as encrypted, corrupt, empty or without a text layer: the "
            "rest of the batch was ingested, and the index still holds the previous version of "
            "that file if it had one. Scanned PDFs need ingest --ocr with tesseract installed.",
            "Another ingest is writing to the index: only one writer may hold an index at a "
            "time. Wait for it, or pass --wait SECONDS.",
        ],
    ),
]


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "docs" / "operations-handbook.pdf"
    styles = getSampleStyleSheet()
    story: list[object] = []
    for number, (title, paragraphs) in enumerate(PAGES):
        if number:
            story.append(PageBreak())
        story.append(Paragraph(title, styles["Title" if number == 0 else "Heading1"]))
        for text in paragraphs:
            story.append(Paragraph(text, styles["BodyText"]))
            story.append(Spacer(1, 8))
    SimpleDocTemplate(str(out), pagesize=A4, title="kbqa operations handbook").build(story)
    print(out)


if __name__ == "__main__":
    main()

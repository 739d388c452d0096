"""`analyze ask "question"`: answer one question with the memory-paging agent, with cited sources."""

from __future__ import annotations

import json

import click

from pipeline.agent.grounding import explain
from pipeline.cli import context_window_option, open_archive, store_option
from pipeline.local_llm import llm_endpoint, llm_options
from pipeline.terminal import safe
from pipeline.types import Answer


EXIT_WITHHELD = 3


def format_answer(result: Answer) -> str:
    """The answer, a one-line warning when it is ungrounded, then numbered sources as `file, page N`, with control
    characters escaped (`safe`)."""
    lines = [result.answer.strip() or "(no answer)"]
    if result.grounded is False and result.withheld is None:
        lines.append(f"Warning: {explain(result.unsupported, result.mismatched)}")
    if result.citations:
        lines += ["", "Sources:"]
        for number, citation in enumerate(result.citations, start=1):
            where = f", page {citation.page}" if citation.page is not None else ""
            if citation.ocr:
                where += (f" (OCR, low confidence {citation.ocr_confidence:.2f})" if citation.low_confidence
                          else " (OCR)")
            inferred = " (inferred: the model cited nothing)" if citation.inferred else ""
            lines.append(f"  [{number}] {citation.source}{where}{inferred}")
    return safe("\n".join(lines))


@click.command("ask")
@click.argument("question")
@store_option
@click.option("--model", envvar="ANALYZE_MODEL", help="Model name sent to the endpoint (env ANALYZE_MODEL).")
@context_window_option
@click.option("--tool-mode", type=click.Choice(["tools", "json"]), envvar="ANALYZE_TOOL_MODE",
              help="tools: native tool calls (default); json: one JSON object per step, constrained by "
                   "response_format (for servers whose tool calls are unreliable).")
@click.option("--max-steps", type=click.IntRange(1), default=12, show_default=True,
              help="Function-calling steps before one final forced answer step.")
@click.option("--top-k", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Most search hits per page (fewer when the window is small).")
@click.option("--session", help="Keep working memory and conversation across invocations under this name.")
@click.option("--strict", is_flag=True, default=None,
              help="Decline (exit 3) instead of giving an answer whose numbers, names or dates are in no retrieved "
                   "chunk (env ANALYZE_STRICT=1).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer as one JSON object.")
@click.option("--trace", is_flag=True, help="Show every step live on stderr.")
@llm_options
def command(question: str, store: str, model: str | None, context_window: int | None, tool_mode: str | None,
            max_steps: int, top_k: int, session: str | None, strict: bool | None, as_json: bool, trace: bool, llm: str,
            local_model: str | None) -> None:
    """Answer QUESTION from archival memory; prints the answer and its numbered sources.

    Every number, date, version, identifier, quotation and name in the answer is looked for in the chunks
    retrieved; an answer with claims found in none gets one more look, then a warning line (or, with --strict,
    an abstention that lists them, and exit status 3).

    The endpoint is any OpenAI-compatible server (OPENAI_BASE_URL, OPENAI_API_KEY); with neither set, or with
    --llm local, a local llama.cpp server is started for the question and stopped afterwards.
    """
    from pipeline.agent.loop import answer
    from pipeline.config import Settings
    from pipeline.llm import LLMError, make_client

    if not question.strip():
        raise click.UsageError("the question is empty")
    settings = Settings.from_env(store=store, model=model, context_window=context_window, tool_mode=tool_mode,
                                 max_steps=max_steps, top_k=top_k, strict=strict)
    log = (lambda line: click.echo(safe(line), err=True)) if trace else None
    archive = open_archive(store)
    with llm_endpoint(settings, llm=llm, local_model=local_model, echo=lambda m: click.echo(m, err=True)) as settings:
        try:
            client = make_client(settings, on_retry=log)
        except LLMError as exc:
            raise click.ClickException(str(exc)) from exc
        result = answer(question, retriever=archive, client=client, settings=settings, session=session, trace=log)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif result.status == "ok":
        click.echo(format_answer(result))
    if result.status != "ok":
        raise click.ClickException(f"no answer: {result.error}")
    if result.withheld is not None:
        raise SystemExit(EXIT_WITHHELD)

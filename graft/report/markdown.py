"""The model card as Markdown (MODEL_CARD.md): every value escaped, so labels stay inert text."""

from __future__ import annotations

from graft.report.card import OWNER, Owner, Table, model_card


def _md(text: str) -> str:
    """Plain text made inert in Markdown (and in the HTML that Markdown may contain)."""
    text = " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\`*_[]|#":
        text = text.replace(char, "\\" + char)
    return text


def _md_value(value) -> list[str]:
    if isinstance(value, Owner):
        return [f"_{OWNER}_" + (f" {_md(value.hint)}" if value.hint else "")]
    if isinstance(value, Table):
        lines = ["", "| " + " | ".join(_md(h) for h in value.headers) + " |",
                 "|" + "|".join("---" for _ in value.headers) + "|"]
        return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in value.rows] + [""]
    if isinstance(value, list):
        return [""] + [f"- {_md(item)}" for item in value] + [""]
    return [_md(value)]


def model_card_markdown(manifest: dict) -> str:
    """The model card as Markdown (MODEL_CARD.md)."""
    lines = [f"# Model card: {_md(manifest.get('name', 'model'))}", "",
             "Sections follow *Model Cards for Model Reporting* (Mitchell et al., 2019). Facts come from "
             "graft.json; fields marked _to be completed by the model owner_ are for you to fill in.", ""]
    for title, fields in model_card(manifest):
        lines += [f"## {title}", ""]
        for name, value in fields:
            body = _md_value(value)  # a block (list, table) starts with an empty line
            lines += [f"**{_md(name)}:** {body[0]}", ""] if len(body) == 1 else [f"**{_md(name)}:**", *body]
    return "\n".join(lines).rstrip() + "\n"

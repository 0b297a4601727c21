"""tgmae.study.report_html: report.html rendered from report.md's lines, block by block, text escaped."""

from __future__ import annotations

from tgmae.study.report_html import markdown_to_html


def test_each_markdown_block_of_the_report_becomes_its_html():
    md = ["# a <study>", "", "First sentence.", "Second, T->V.", "", "## Findings", "",
          "- tube: +6.0 points", "- tgm: -1.0 points", "", "| Mask | ratio | MAE |", "|---|---|---|",
          "| tube | 0.75 |  |", "", "![Pretraining losses](../runs/loss curves.png)", ""]
    page = markdown_to_html(md, "a <study>")
    assert page.startswith("<!doctype html><meta charset='utf-8'><title>a &lt;study&gt;</title><style>")
    assert "<h1>a &lt;study&gt;</h1>" in page and "<h2>Findings</h2>" in page
    assert "<p>First sentence.\nSecond, T-&gt;V.</p>" in page  # consecutive lines: one paragraph
    assert "<ul><li>tube: +6.0 points</li><li>tgm: -1.0 points</li></ul>" in page
    assert ("<table><tr><th>Mask</th><th>ratio</th><th>MAE</th></tr>\n"
            "<tr><td>tube</td><td>0.75</td><td></td></tr></table>") in page  # the |---| row dropped, empty cell kept
    assert "<img src='../runs/loss curves.png' alt='Pretraining losses'>" in page  # linked as the .md links it
    assert markdown_to_html("\n".join(md), "a <study>") == page  # the text or its lines


def test_a_paragraph_with_a_blank_line_inside_one_line_is_two_paragraphs():
    page = markdown_to_html(["intro.\n\nWall time: 1.5 min.", "", "| a |", "|---|"], "t")
    assert "<p>intro.</p>\n<p>Wall time: 1.5 min.</p>\n<table><tr><th>a</th></tr></table>" in page
